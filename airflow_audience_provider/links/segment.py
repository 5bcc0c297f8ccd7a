"""Links from Segment tasks to the audience in the Segment app."""

from __future__ import annotations

from airflow_audience_provider.links.base import AudienceLink


class SegmentAudienceLink(AudienceLink):
    """Opens the Engage audience the task created, changed, enabled or waited on."""

    name = "Segment audience"
    key = "segment_audience_url"
