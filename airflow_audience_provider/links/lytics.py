"""Links from Lytics tasks to the segment in the Lytics web app."""

from __future__ import annotations

from airflow_audience_provider.links.base import AudienceLink


class LyticsSegmentLink(AudienceLink):
    """Opens the segment (audience) the task created, changed or reevaluated."""

    name = "Lytics segment"
    key = "lytics_segment_url"
