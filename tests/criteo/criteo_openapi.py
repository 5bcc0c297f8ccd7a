"""Validate Criteo exchanges against Criteo's official OpenAPI documents with openapi-core.

Every request a hook sends (path, query, body) and every successful answer of the fake (status,
body) is checked against the document of its version: ``/2026-07/retail-media`` against
``criteo-retailmedia-2026-07.json``, ``/preview/retail-media`` against the preview document,
``/2026-07/marketing-solutions`` against ``criteo-marketingsolutions-2026-07.json``. Other
versions (the deprecated ``2026-01`` the tests use for the Sunset headers) and the OAuth token
endpoint, which the documents do not describe, are skipped. Error answers are not checked: the
documents list success codes only. The checking itself is
``tests/openapi_check.py``, shared with the other vendors.
"""

from __future__ import annotations

from pathlib import Path

from openapi_check import OpenApiCheck

#: Byte-identical copies of github.com/criteo/criteo-api-sdk-generator api-specifications/ at dadf349 (2026-08-17).
SPECS = Path(__file__).resolve().parent / "specs"
DOCUMENTS = {
    ("2026-07", "retail-media"): "criteo-retailmedia-2026-07.json",
    ("preview", "retail-media"): "criteo-retailmedia-preview.json",
    ("2026-07", "marketing-solutions"): "criteo-marketingsolutions-2026-07.json",
    ("2026-07", "advertisers"): "criteo-marketingsolutions-2026-07.json",  # ListAdvertisers
}


class SpecCheck(OpenApiCheck):
    """Collects (request, response) pairs from hook sessions and validates them."""

    vendor = "Criteo"

    def __init__(self) -> None:
        super().__init__({key: SPECS / name for key, name in DOCUMENTS.items()})

    def document_for(self, path: str) -> tuple[str, str] | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2:
            return None
        return (parts[0], parts[1]) if (parts[0], parts[1]) in DOCUMENTS else None
