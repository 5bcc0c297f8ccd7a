"""Apache Airflow provider for advertising and customer-data-platform audiences.

Importing this package is cheap on purpose: the scheduler discovers providers on every DAG
parse. Only :func:`get_provider_info` and the version live here.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PKG = "airflow_audience_provider"

#: vendor -> (integration name, docs URL). Extended as each vendor lands.
_INTEGRATIONS: dict[str, tuple[str, str]] = {
    "lytics": ("Lytics", "https://docs.lytics.com/reference"),
}


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    from airflow_audience_provider.connections import CONNECTION_SPECS

    vendors = list(_INTEGRATIONS)

    def modules(kind: str, only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        return [
            {"integration-name": _INTEGRATIONS[v][0], "python-modules": [f"{_PKG}.{kind}.{v}"]}
            for v in vendors
            if only is None or v in only
        ]

    return {
        "package-name": "airflow-audience-provider",
        "name": "Audience",
        "description": "Keep Yandex.Audience, Yandex Direct, Twilio Segment, Criteo and Lytics "
        "audiences in step with your warehouse.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": name,
                "external-doc-url": url,
                "how-to-guide": [f"/docs/{_PKG}/operators/{v}.rst"],
                "tags": ["service"],
            }
            for v, (name, url) in _INTEGRATIONS.items()
        ],
        "hooks": modules("hooks"),
        "operators": modules("operators"),
        "sensors": modules("sensors"),
        "triggers": modules("triggers"),
        "connection-types": [spec.provider_entry() for spec in CONNECTION_SPECS.values()],
        "extra-links": [f"{_PKG}.links.lytics.LyticsSegmentLink"],
        "asset-uris": [
            {
                "schemes": ["lytics"],
                "handler": f"{_PKG}.assets.sanitize_uri",
                "factory": f"{_PKG}.assets.create_asset",
            }
        ],
    }
