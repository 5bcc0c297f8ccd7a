"""Sandbox test helpers: a small Lytics API client and answer checks against the vendor's spec.

A plain module (not conftest) so test files can import it by a unique name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import requests

SPEC_PATH = Path(__file__).parent / "specs" / "lytics-api-v2-openapi.segments-excerpt.json"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text())

#: Segment fields the fake always fills (the spec marks none required; the provider relies on these).
SEGMENT_REQUIRED = [
    "id", "aid", "account_id", "author_id", "name", "slug_name", "segment_ql", "table", "kind",
    "description", "is_public", "tags", "save_hist", "groups", "ast", "invalid", "invalid_reason",
    "created", "updated",
]  # fmt: skip


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    """Flatten the spec's ``allOf: [ApiResponse, {data: ...}]`` into one object schema (later wins).

    Validating the ``allOf`` literally is impossible for list answers: ``ApiResponse.data`` says
    ``object`` while the second part says ``array``; the spec means "ApiResponse with this data".
    """
    if "allOf" not in schema:
        return schema
    merged: dict[str, Any] = {"type": "object", "properties": {}}
    for part in schema["allOf"]:
        resolved = SPEC["components"]["schemas"][part["$ref"].rsplit("/", 1)[1]] if "$ref" in part else part
        merged["properties"].update(resolved.get("properties", {}))
    return merged


def spec_response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The spec's JSON schema of an answer, ready for ``jsonschema`` (refs resolve in-document)."""
    responses = SPEC["paths"][path][method.lower()]["responses"]
    key = str(status) if str(status) in responses else "default"
    schema = responses[key]["content"]["application/json"]["schema"]
    schema = copy.deepcopy(_merge_all_of(schema))
    schema["components"] = SPEC["components"]
    return schema


def schema_for(name: str, **overrides: Any) -> dict[str, Any]:
    """A schema that references ``components/schemas/<name>`` plus ``overrides``."""
    return {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"], **overrides}


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """jsonschema validation (Draft 7 semantics; ``$ref`` resolved in the same document)."""
    jsonschema.Draft7Validator(schema).validate(instance)


def check_segment(segment: dict[str, Any], *, sizes: bool = False) -> None:
    """A Segment answer conforms to ``models.Segment`` and carries the fields the provider needs."""
    required = [*SEGMENT_REQUIRED, "size"] if sizes else SEGMENT_REQUIRED
    validate(segment, schema_for("models.Segment", required=required))
    assert len(segment["id"]) == 32
    int(segment["id"], 16)


def check_v2_error(response: requests.Response, status: int, code: str) -> str:
    """The answer is a spec ``models.ApiErrorResponse`` with ``status`` and ``code``; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, schema_for("models.ApiErrorResponse", required=["status", "errors", "request_id"]))
    assert body["status"] == status
    error = body["errors"][0]
    assert set(error) >= {"code", "level", "message", "timestamp"}
    assert error["code"] == code, error
    assert body["request_id"] == response.headers["x-request-id"]
    return error["message"]


class LyticsApi:
    """Minimal client used by the tests: base URL + the sandbox token, raw in ``Authorization``."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = token

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def create(self, **fields: Any) -> dict[str, Any]:
        response = self.post("/v2/segment", json=fields)
        assert response.status_code == 201, response.text
        return response.json()["data"]
