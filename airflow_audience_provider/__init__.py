"""Apache Airflow provider for advertising and customer-data-platform audiences.

Importing this package is cheap on purpose: the scheduler discovers providers on every DAG
parse. Only :func:`get_provider_info` and the version live here.
"""

from __future__ import annotations

from typing import Any

from airflow_audience_provider.connections import CONNECTION_SPECS

__version__ = "0.1.0"

_PKG = "airflow_audience_provider"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

    Generated from ``airflow_audience_provider.connections.CONNECTION_SPECS``, the one
    place a vendor is registered.
    """
    specs = list(CONNECTION_SPECS.values())

    def modules(kind: str) -> list[dict[str, Any]]:
        return [
            {"integration-name": s.integration_name, "python-modules": [f"{_PKG}.{kind}.{s.module_name}"]}
            for s in specs
            if kind in s.module_kinds
        ]

    return {
        "package-name": "airflow-audience-provider",
        "name": "Audience",
        "description": "Keep Yandex.Audience, Yandex Direct, Twilio Segment, Criteo and Lytics "
        "audiences in step with your warehouse.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": s.integration_name,
                "external-doc-url": s.external_doc_url,
                "how-to-guide": [f"/docs/{_PKG}/operators/{s.module_name}.rst"],
                "tags": ["service"],
            }
            for s in specs
        ],
        "hooks": modules("hooks"),
        "operators": modules("operators"),
        "sensors": modules("sensors"),
        "triggers": modules("triggers"),
        "connection-types": [s.provider_entry() for s in specs],
        "extra-links": [link for s in specs for link in s.extra_links],
        "asset-uris": [
            {
                "schemes": [s.asset_scheme],
                "handler": f"{_PKG}.assets.sanitize_uri",
                "factory": f"{_PKG}.assets.create_asset",
            }
            for s in specs
            if s.asset_scheme
        ],
        "config": {
            "audience": {
                "description": "Where the provider keeps state that several workers must share.",
                "options": {
                    "snapshot_base_path": {
                        "description": "Contact-list snapshots, journals and leases: a directory or an "
                        "ObjectStoragePath URL every worker reaches. Unset: $AIRFLOW_HOME/audience_snapshots, "
                        "which is local to each host.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://my-bucket/airflow/audience-state",
                        "default": None,
                    },
                    "rate_limit_backend": {
                        "description": "Client-side rate budgets: file (the default, "
                        "$AIRFLOW_HOME/audience_ratelimits, shared by one host), memory, a directory, or "
                        "redis://host:port/db to share them between hosts (needs the redis extra).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "redis://redis:6379/1",
                        "default": None,
                        "sensitive": True,
                    },
                    "token_cache": {
                        "description": "Where OAuth2 access tokens (Criteo) are shared, sealed with [core] "
                        "fernet_key: file (the default when a Fernet key is set: "
                        "$AIRFLOW_HOME/audience_tokens, shared by the task processes and the triggerer of "
                        "one host), process (each process mints its own), file:///dir, or "
                        "redis://host:port/db to share them between hosts (needs the redis extra). "
                        "Without a Fernet key tokens stay in each process.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "redis://redis:6379/3",
                        "default": None,
                        "sensitive": True,
                    },
                },
            }
        },
    }
