"""A read-only sequence of strings kept as one bytes buffer until an item is read.

Hashed identifiers travel in 50,000-string lists; keeping them as the bytes they were read from
spares one ``str`` object per identifier unless someone indexes the list. The client's request
bodies (:class:`~airflow_audience_provider.core.transport.JsonStrings`) and the sandbox's Criteo
fake (its recorded amendments) both use it; it holds no vendor or client logic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload


class LazyStrings(Sequence[str]):
    """``count`` strings held in a bytes buffer; a subclass says how the buffer splits (:meth:`split`).

    :param count: how many strings the buffer holds; reading items checks it.
    """

    def __init__(self, count: int) -> None:
        self._count = count
        self._values: list[str] | None = None

    def split(self) -> list[str]:
        """The strings of the buffer, in order."""
        raise NotImplementedError

    def _list(self) -> list[str]:
        if self._values is None:
            values = self.split()
            if len(values) != self._count:
                raise ValueError(f"{len(values)} strings where {self._count} were announced")
            self._values = values
        return self._values

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._list()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._list())
