"""Stateful fake vendor APIs served over real HTTP on 127.0.0.1.

The sandbox lets tests, the demo and users exercise the provider without network access:
each vendor fake keeps its state in memory, checks authentication like the vendor, answers
in the vendor's envelopes, runs asynchronous work on a clock, and can be told to misbehave
(5xx/429 bursts, dropped connections, slow answers, requests applied whose answer is lost,
requests answered with an error and applied later).

Importing this package is cheap: the web stack (Starlette, uvicorn) is imported only when a
fake or the server is used.

Typical use::

    from airflow_audience_provider.sandbox import SandboxServer

    with SandboxServer(vendors=["lytics"]) as sandbox:
        os.environ.update(sandbox.env())           # AIRFLOW_CONN_LYTICS_DEFAULT=...
        sandbox.fake("lytics").faults.inject("status", status=503, count=2)
        ...

From a shell: ``airflow-audience-sandbox`` (see :mod:`airflow_audience_provider.sandbox.server`).

Adding a vendor: write ``sandbox/<vendor>.py`` with a :class:`~.base.VendorFake` subclass and
add one line to ``VENDOR_FAKES``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_audience_provider.sandbox.base import VendorFake
    from airflow_audience_provider.sandbox.server import SandboxServer

__all__ = ["VENDOR_FAKES", "SandboxServer", "available_vendors", "load_fake_class"]

#: Vendor name -> "module:Class" of its fake. The order fixes the ports given by ``--port-base``
#: (vendor i listens on port_base + i), so append new vendors at the end.
VENDOR_FAKES: dict[str, str] = {
    "lytics": "airflow_audience_provider.sandbox.lytics:LyticsFake",
    "yandex_audience": "airflow_audience_provider.sandbox.yandex_audience:YandexAudienceFake",
    "yandex_direct": "airflow_audience_provider.sandbox.yandex_direct:YandexDirectFake",
    "segment": "airflow_audience_provider.sandbox.segment:SegmentFake",
    "criteo": "airflow_audience_provider.sandbox.criteo:CriteoFake",
}


def available_vendors() -> list[str]:
    """Names of the vendors that have a fake, in registry order."""
    return list(VENDOR_FAKES)


def load_fake_class(vendor: str) -> type[VendorFake]:
    """Import and return the fake class of ``vendor``.

    :raises KeyError: when no fake is registered under that name.
    """
    try:
        target = VENDOR_FAKES[vendor]
    except KeyError:
        raise KeyError(f"No sandbox fake for vendor {vendor!r}; available: {', '.join(available_vendors())}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def __getattr__(name: str) -> Any:
    if name == "SandboxServer":
        # sandbox.server imports this package: a cycle at the top
        from airflow_audience_provider.sandbox.server import SandboxServer

        return SandboxServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
