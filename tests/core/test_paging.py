"""The one paging loop: every page read, and a listing that does not advance stopped with an error."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_audience_provider.core.errors import AudienceServerError
from airflow_audience_provider.core.paging import paginate


def test_reads_every_page_until_the_last():
    pages = {None: ([1, 2], "a"), "a": ([3], "b"), "b": ([4], None)}
    asked: list[Any] = []

    def fetch(cursor: str | None) -> tuple[list[int], str | None]:
        asked.append(cursor)
        return pages[cursor]

    assert list(paginate(fetch, None, endpoint="GET /things", vendor="test")) == [1, 2, 3, 4]
    assert asked == [None, "a", "b"]


def test_a_position_that_comes_back_is_an_error_naming_the_endpoint():
    with pytest.raises(AudienceServerError, match="GET /things does not advance"):
        list(paginate(lambda offset: ([offset], 0 if offset else 5), 0, endpoint="GET /things", vendor="test"))


def test_a_listing_past_the_page_limit_is_an_error():
    with pytest.raises(AudienceServerError, match="more than 3 pages") as info:
        list(paginate(lambda n: ([n], n + 1), 0, endpoint="things.get", vendor="test", max_pages=3))
    assert info.value.vendor == "test"
