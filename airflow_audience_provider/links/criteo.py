"""Links from Criteo tasks to the segment or audience in the Criteo web app."""

from __future__ import annotations

from airflow_audience_provider.links.base import AudienceLink


class CriteoSegmentLink(AudienceLink):
    """Opens the audience segment (contact list) the task created, changed or filled."""

    name = "Criteo segment"
    key = "criteo_segment_url"


class CriteoAudienceLink(AudienceLink):
    """Opens the audience (algebra of segments) the task created or changed."""

    name = "Criteo audience"
    key = "criteo_audience_url"
