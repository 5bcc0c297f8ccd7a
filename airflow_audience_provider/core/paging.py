"""Reading a listing page by page, with one guard against a vendor that never stops.

Each vendor pages its own way (an opaque cursor, an offset, an offset the answer names); the hook
says how in one function that fetches the page at a position and returns the page's items and the
position of the next page, or None after the last one. :func:`paginate` loops over it and stops a
listing that does not advance (a position comes back) or runs past ``max_pages``, with an error
naming the endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

from airflow_audience_provider.core.errors import AudienceServerError

_T = TypeVar("_T")
_Position = TypeVar("_Position", bound=Hashable)

#: Pages read from one listing at most, unless the caller says otherwise.
MAX_PAGES = 1000


def paginate(
    fetch: Callable[[_Position], tuple[Iterable[_T], _Position | None]],
    start: _Position,
    *,
    endpoint: str,
    vendor: str,
    max_pages: int = MAX_PAGES,
) -> Iterator[_T]:
    """Every item of a paged listing, read lazily from ``start`` on.

    :param fetch: reads the page at a position; returns its items and the next page's position,
        or None when it was the last page.
    :param start: the first page's position (None for a cursor listing, 0 for an offset one).
    :param endpoint: the listing, as the error names it (``GET /spaces/{id}/audiences``).
    :raises AudienceServerError: when a position comes back (the listing would loop) or the
        listing runs past ``max_pages``.
    """
    seen: set[Hashable] = {start}
    position = start
    for _ in range(max_pages):
        items, following = fetch(position)
        yield from items
        if following is None:
            return
        if following in seen:
            raise AudienceServerError(
                f"Listing {endpoint} does not advance: the next page's position {following!r} was read already",
                vendor=vendor,
            )
        seen.add(following)
        position = following
    raise AudienceServerError(f"Listing {endpoint} has more than {max_pages} pages; stopped reading", vendor=vendor)
