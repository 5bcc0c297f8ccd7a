"""Validate Criteo exchanges against Criteo's official OpenAPI documents with openapi-core.

Every request a hook sends (path, query, body) and every successful answer of the fake (status,
body) is checked against the document of its version: ``/2026-07/retail-media`` against
``criteo-retailmedia-2026-07.json``, ``/preview/retail-media`` against the preview document,
``/2026-07/marketing-solutions`` against ``criteo-marketingsolutions-2026-07.json``. Other
versions (the deprecated ``2026-01`` the tests use for the Sunset headers) and the OAuth token
endpoint, which the documents do not describe, are skipped. Error answers are not checked: the
documents list success codes only (vendor notes §4.4).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import requests

#: Copies of ../shared/specs (see ../shared/specs/SOURCES.md for their origin and checksums).
SPECS = Path(__file__).resolve().parent / "specs"
DOCUMENTS = {
    ("2026-07", "retail-media"): "criteo-retailmedia-2026-07.json",
    ("preview", "retail-media"): "criteo-retailmedia-preview.json",
    ("2026-07", "marketing-solutions"): "criteo-marketingsolutions-2026-07.json",
}


def _load(name: str) -> dict[str, Any]:
    return json.loads((SPECS / name).read_text())


class SpecCheck:
    """Collects (request, response) pairs from hook sessions and validates them."""

    def __init__(self) -> None:
        self._raw = {key: _load(name) for key, name in DOCUMENTS.items()}
        self._apis: dict[tuple[str, str, str], Any] = {}
        self.exchanges: list[requests.Response] = []
        self.base_url = ""

    def start(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.exchanges = []

    def attach(self, session: requests.Session) -> None:
        session.hooks["response"].append(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.exchanges.append(response)

    def _api(self, key: tuple[str, str]) -> Any:
        from openapi_core import OpenAPI

        cache_key = (*key, self.base_url)
        if cache_key not in self._apis:
            spec = copy.deepcopy(self._raw[key])
            spec["servers"] = [{"url": self.base_url}]
            # openapi-core cannot check OAuth2 (it warns "Unsupported scheme type"); the fake checks tokens.
            spec.pop("security", None)
            for operations in spec["paths"].values():
                for operation in operations.values():
                    if isinstance(operation, dict):
                        operation.pop("security", None)
            self._apis[cache_key] = OpenAPI.from_dict(spec)
        return self._apis[cache_key]

    def document_for(self, path: str) -> tuple[str, str] | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2:
            return None
        return (parts[0], parts[1]) if (parts[0], parts[1]) in DOCUMENTS else None

    def problems(self) -> list[str]:
        from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

        found = []
        for response in self.exchanges:
            prepared = response.request
            path = requests.utils.urlparse(prepared.url).path
            key = self.document_for(path)
            if key is None:
                continue
            api = self._api(key)
            request = RequestsOpenAPIRequest(prepared)
            try:
                api.validate_request(request)
            except Exception as exc:  # report every exchange, not only the first
                found.append(f"request {prepared.method} {path}: {_describe(exc)}")
                continue
            # The documents declare an application/json content without a schema for the 204 of the RM
            # contact-list clear; a 204 has no body by definition (RFC 9110), so there is nothing to check.
            if response.status_code == 204 and not response.content:
                continue
            if 200 <= response.status_code < 300:
                try:
                    api.validate_response(request, RequestsOpenAPIResponse(response))
                except Exception as exc:
                    found.append(f"response {response.status_code} to {prepared.method} {path}: {_describe(exc)}")
        return found

    def checked(self) -> int:
        """How many exchanges had a document to be checked against."""
        return sum(
            1 for r in self.exchanges if self.document_for(requests.utils.urlparse(r.request.url).path) is not None
        )

    def assert_valid(self) -> None:
        problems = self.problems()
        assert not problems, "exchanges that break Criteo's OpenAPI documents:\n" + "\n".join(problems)


def _describe(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    details = [str(exc)]
    for attr in ("schema_errors", "errors"):
        for error in getattr(cause, attr, None) or getattr(exc, attr, None) or []:
            details.append(getattr(error, "message", str(error)))
    return "; ".join(details)[:1500]
