"""Validate recorded HTTP exchanges against a vendor's OpenAPI document with openapi-core.

Shared by the vendor test suites (Criteo, Segment, Lytics). A check records every exchange of the
``requests`` sessions it is attached to; :meth:`OpenApiCheck.problems` then validates each request
(path, query, headers, body) and each answer (status, content type, body) against the document the
request's path belongs to. A subclass says which document that is (:meth:`document_for`), may
rewrite a request before validation (:meth:`for_validation`) or the document when it is loaded
(:meth:`prepare`), and may ask for the media types of each operation to be checked as well
(:attr:`check_media_types`): the ``Accept`` header against the types the operation produces, the
``Content-Type`` against those it consumes, and no body and no ``Content-Type`` at all when the
operation takes no body. An operation's media types are its ``x-sdk-media-types`` when the document
carries them, else the content types it declares.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import requests

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def load_document(path: Path) -> dict[str, Any]:
    """A JSON or YAML OpenAPI document."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return dict(yaml.safe_load(text))
    return dict(json.loads(text))


class OpenApiCheck:
    """Collects (request, response) pairs from sessions and validates them against OpenAPI documents."""

    #: Whose documents these are, for the failure message.
    vendor = "the vendor"
    #: Check Accept and Content-Type per operation (see the module docstring).
    check_media_types = False
    #: Also validate error answers whose status the operation declares (the rest are skipped).
    check_error_answers = False
    #: The path of the document's server under the base URL (Lytics: ``/v2``).
    server_path = ""
    #: Validate requests too; off where a test sends requests that break the document on purpose
    #: (then only the answers are checked).
    check_requests = True

    def __init__(self, documents: Mapping[Hashable, Path]) -> None:
        self._paths = dict(documents)
        self._raw: dict[Hashable, dict[str, Any]] = {}
        self._apis: dict[tuple[Hashable, str], Any] = {}
        self._routes: dict[Hashable, list[tuple[re.Pattern[str], str, str, dict[str, Any]]]] = {}
        self.exchanges: list[requests.Response] = []
        self.base_url = ""

    # -- what a subclass adapts ---------------------------------------------------------------

    def document_for(self, path: str) -> Hashable | None:
        """The key of the document that describes ``path`` (None: not described, skipped)."""
        return next(iter(self._paths)) if len(self._paths) == 1 else None

    def prepare(self, spec: dict[str, Any]) -> None:
        """Adapt a loaded document in place before openapi-core reads it (default: nothing)."""

    def for_validation(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        """The request as the document can express it (default: unchanged)."""
        return prepared

    # -- recording ------------------------------------------------------------------------------

    def start(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.exchanges = []

    def attach(self, session: requests.Session) -> None:
        session.hooks["response"].append(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.exchanges.append(response)

    # -- documents ------------------------------------------------------------------------------

    def raw(self, key: Hashable) -> dict[str, Any]:
        if key not in self._raw:
            self._raw[key] = load_document(self._paths[key])
        return self._raw[key]

    def _base_of(self, prepared: requests.PreparedRequest) -> str:
        """The server the document's paths are relative to: :attr:`base_url`, else the request's origin."""
        if self.base_url:
            return self.base_url
        parts = requests.utils.urlparse(str(prepared.url))
        return f"{parts.scheme}://{parts.netloc}"

    def _api(self, key: Hashable, base_url: str) -> Any:
        from openapi_core import Config, OpenAPI

        cache_key = (key, base_url)
        if cache_key not in self._apis:
            spec = copy.deepcopy(self.raw(key))
            spec["servers"] = [{"url": base_url + self.server_path}]
            # openapi-core cannot check every scheme (OAuth2 warns "Unsupported scheme type"); the fakes check auth.
            spec.pop("security", None)
            for operations in spec["paths"].values():
                for operation in operations.values():
                    if isinstance(operation, dict):
                        operation.pop("security", None)
            self.prepare(spec)
            # Vendor JSON media types (``application/vnd.segment.v1+json``) are JSON too.
            vendor_json = {
                media: json.loads
                for operations in spec["paths"].values()
                for operation in operations.values()
                if isinstance(operation, dict)
                for media in _content_types(operation)
                if media.endswith("+json")
            }
            self._apis[cache_key] = OpenAPI.from_dict(spec, config=Config(extra_media_type_deserializers=vendor_json))
        return self._apis[cache_key]

    def operation(self, key: Hashable, method: str, path: str, base_url: str = "") -> tuple[str, dict[str, Any]] | None:
        """``(operationId, operation)`` of the document that ``method path`` calls, or None."""
        if key not in self._routes:
            routes = []
            for template, operations in self.raw(key)["paths"].items():
                pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
                for name, operation in operations.items():
                    if name in _METHODS and isinstance(operation, dict):
                        routes.append((re.compile(f"^{pattern}$"), name, template, operation))
            # Literal segments win over parameters (``/audiences/previews`` before ``/audiences/{id}``).
            routes.sort(key=lambda route: route[2].count("{"))
            self._routes[key] = routes
        prefix = requests.utils.urlparse(base_url or self.base_url).path.rstrip("/") + self.server_path
        relative = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        for pattern, name, _template, operation in self._routes[key]:
            if name == method.lower() and pattern.match(relative):
                return str(operation.get("operationId") or f"{method} {path}"), operation
        return None

    # -- checks ---------------------------------------------------------------------------------

    def media_problems(self, key: Hashable, prepared: requests.PreparedRequest) -> list[str]:
        """Accept / Content-Type / body presence of one request against its operation."""
        path = requests.utils.urlparse(prepared.url).path
        found = self.operation(key, str(prepared.method), path)
        if found is None:
            return []
        operation_id, operation = found
        declared = operation.get("x-sdk-media-types") or {}
        produces = list(declared.get("produces") or [])
        if not produces:
            for answer in (operation.get("responses") or {}).values():
                produces.extend((answer.get("content") or {}).keys())
        consumes = list(declared.get("consumes") or ((operation.get("requestBody") or {}).get("content") or {}))
        problems = []
        accept = prepared.headers.get("Accept")
        offered = [part.split(";")[0].strip() for part in (accept or "").split(",") if part.strip()]
        if not offered or any(media not in produces for media in offered):
            problems.append(f"{operation_id}: Accept {accept!r} is not one of {produces}")
        content_type = prepared.headers.get("Content-Type")
        has_body = bool(prepared.body)
        if not consumes:
            if has_body or content_type:
                problems.append(f"{operation_id} takes no body, but the request sends one ({content_type!r})")
        elif has_body and (content_type or "").split(";")[0].strip() not in consumes:
            problems.append(f"{operation_id}: Content-Type {content_type!r} is not one of {consumes}")
        return problems

    def problems(self) -> list[str]:
        from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

        found = []
        for response in self.exchanges:
            prepared = response.request
            path = requests.utils.urlparse(prepared.url).path
            key = self.document_for(path)
            if key is None:
                continue
            label = f"{prepared.method} {path}"
            if self.check_media_types and self.check_requests:
                found.extend(f"request {label}: {problem}" for problem in self.media_problems(key, prepared))
            api = self._api(key, self._base_of(prepared))
            if isinstance(prepared.body, bytearray):  # a body built in one buffer (encode_json): same bytes
                prepared = prepared.copy()
                prepared.body = bytes(prepared.body)
            request = RequestsOpenAPIRequest(self.for_validation(prepared))
            if self.check_requests:
                try:
                    api.validate_request(request)
                except Exception as exc:  # report every exchange, not only the first
                    found.append(f"request {label}: {describe(exc)}")
                    continue
            elif self.operation(key, str(prepared.method), path) is None:
                continue  # a path the document does not have
            # A 204 has no body by definition (RFC 9110), so there is nothing to check.
            if response.status_code == 204 and not response.content:
                continue
            declared_error = self.check_error_answers and self._declares(key, prepared, response.status_code)
            if not 200 <= response.status_code < 300 and not declared_error:
                continue
            try:
                api.validate_response(request, RequestsOpenAPIResponse(response))
            except Exception as exc:
                found.append(f"response {response.status_code} to {label}: {describe(exc)}")
        return found

    def _declares(self, key: Hashable, prepared: requests.PreparedRequest, status: int) -> bool:
        found = self.operation(key, str(prepared.method), requests.utils.urlparse(prepared.url).path)
        return found is not None and str(status) in (found[1].get("responses") or {})

    def checked(self) -> int:
        """How many exchanges had a document to be checked against."""
        return sum(
            1 for r in self.exchanges if self.document_for(requests.utils.urlparse(r.request.url).path) is not None
        )

    def assert_valid(self) -> None:
        problems = self.problems()
        assert not problems, f"exchanges that break {self.vendor}'s OpenAPI documents:\n" + "\n".join(problems)


def _content_types(operation: dict[str, Any]) -> set[str]:
    found = set(((operation.get("requestBody") or {}).get("content") or {}).keys())
    for answer in (operation.get("responses") or {}).values():
        if isinstance(answer, dict):
            found.update((answer.get("content") or {}).keys())
    return found


def describe(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    details = [str(exc)]
    for attr in ("schema_errors", "errors"):
        for error in getattr(cause, attr, None) or getattr(exc, attr, None) or []:
            details.append(getattr(error, "message", str(error)))
    return "; ".join(details)[:1500]


# -- Segment ------------------------------------------------------------------------------------

#: Segment's Public API 73.2.0 rebuilt from github.com/segmentio/public-api-sdk-python at 35b3d8b (2026-08-20):
#: no current OpenAPI document of Segment's is public.
SEGMENT_DOCUMENT = (
    Path(__file__).resolve().parent / "segment" / "specs" / "segment-public-api-73.2.0-from-python-sdk.yaml"
)
#: The object query parameters the document declares in bracket form (``pagination[count]``).
_SEGMENT_OBJECT_PARAMS = ("pagination", "search", "sort")


class SegmentSpecCheck(OpenApiCheck):
    """Segment's exchanges against the 73.2.0 document, media types and declared error answers included.

    The document writes ``pagination``/``search``/``sort`` in bracket form because the dot form
    Segment's docs use (``pagination.count``) cannot be declared; requests are rewritten to the
    bracket form before validation, so their values are still checked. Paths outside the Public API
    (the sandbox's ``/app`` pages and control routes, ``GET /``) are skipped.
    """

    vendor = "Segment"
    check_media_types = True
    check_error_answers = True

    def __init__(self) -> None:
        super().__init__({"segment": SEGMENT_DOCUMENT})

    def document_for(self, path: str) -> str | None:
        return "segment" if path.startswith("/spaces") else None

    def for_validation(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

        parts = urlsplit(str(prepared.url))
        pairs = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            head, dot, tail = name.partition(".")
            pairs.append((f"{head}[{tail}]" if dot and head in _SEGMENT_OBJECT_PARAMS else name, value))
        copied = prepared.copy()
        copied.url = urlunsplit(parts._replace(query=urlencode(pairs)))
        return copied


# -- Lytics -------------------------------------------------------------------------------------

#: The excerpt of Lytics' API v2 document (docs.lytics.com/reference): every segment path it has.
LYTICS_DOCUMENT = Path(__file__).resolve().parent / "sandbox" / "specs" / "lytics-api-v2-openapi.segments-excerpt.json"


class LyticsSpecCheck(OpenApiCheck):
    """Lytics' v2 segment exchanges against the excerpt, where it covers the operation.

    Paths the excerpt does not have (groups, jobs, ancestors, reevaluate, every v1 path) are
    skipped. The document declares list answers as ``allOf: [ApiResponse, {data: array}]`` while
    ``ApiResponse.data`` is an object; the two parts are merged (later wins) so the document's
    meaning, "an ApiResponse with this data", is what gets checked.
    """

    vendor = "Lytics"
    check_error_answers = True
    server_path = "/v2"

    def __init__(self) -> None:
        super().__init__({"lytics": LYTICS_DOCUMENT})

    def document_for(self, path: str) -> str | None:
        if not path.startswith("/v2/segment"):
            return None
        rest = path[len("/v2") :]
        if rest.split("/")[2:3] in (["group"], ["reevaluate"]) or (rest.count("/") > 2 and "exclude" not in rest):
            return None
        return "lytics"

    def prepare(self, spec: dict[str, Any]) -> None:
        schemas = spec["components"]["schemas"]
        for operations in spec["paths"].values():
            for operation in operations.values():
                body = (operation.get("requestBody") or {}).get("content") or {}
                if "*/*" in body:  # Lytics reads JSON; the document leaves the type open
                    body["application/json"] = body.pop("*/*")
                for answer in (operation.get("responses") or {}).values():
                    for media in (answer.get("content") or {}).values():
                        if "allOf" in media.get("schema", {}):
                            media["schema"] = _merge_all_of(media["schema"], schemas)


def _merge_all_of(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {"type": "object", "properties": {}}
    for part in schema["allOf"]:
        resolved = schemas[part["$ref"].rsplit("/", 1)[1]] if "$ref" in part else part
        merged["properties"].update(copy.deepcopy(resolved.get("properties", {})))
    return merged
