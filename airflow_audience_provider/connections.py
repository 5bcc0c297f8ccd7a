"""One source of truth for the connection forms of every vendor.

``get_provider_info()`` (what the Airflow UI reads on 3.2+) and each hook's
``get_ui_field_behaviour()`` / ``get_connection_form_widgets()`` (what 3.1 reads) are both
generated from ``CONNECTION_SPECS``, so the two cannot drift. Importing this module is
cheap: plain data, no Airflow imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConnField:
    """One extra field of a connection form, stored in the connection's ``extra`` JSON."""

    name: str
    label: str
    description: str
    type: str = "string"  # string | integer | number | boolean
    default: Any = None
    secret: bool = False
    enum: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": [self.type, "null"]}
        if self.default is not None:
            schema["default"] = self.default
        if self.secret:
            schema["format"] = "password"
        if self.enum:
            schema["enum"] = list(self.enum)
        return schema


@dataclass(frozen=True)
class ConnectionSpec:
    """A vendor: its connection type (identity, standard-field behaviour, extra fields) and what
    the provider info registers for it (integration, modules, extra links, asset URI scheme).

    The vendor's modules are ``<kind>/<module>.py`` for each kind in ``module_kinds``.
    """

    conn_type: str
    hook_name: str
    hook_class: str
    conn_name_attr: str
    default_conn_name: str
    hidden_fields: tuple[str, ...]
    relabeling: dict[str, str]
    placeholders: dict[str, str]
    fields: tuple[ConnField, ...] = field(default_factory=tuple)
    #: provider-info integration name and the vendor's API docs
    integration_name: str = ""
    external_doc_url: str = ""
    #: module name under hooks/, operators/, ... (defaults to conn_type)
    module: str = ""
    module_kinds: tuple[str, ...] = ("hooks", "operators", "sensors", "triggers")
    #: dotted paths of the BaseOperatorLink classes
    extra_links: tuple[str, ...] = ()
    #: asset URI scheme and the object kinds allowed in its path (``<scheme>://<account>/<kind>/<id>``)
    asset_scheme: str | None = None
    asset_kinds: tuple[str, ...] = ()

    @property
    def module_name(self) -> str:
        return self.module or self.conn_type

    def ui_field_behaviour(self) -> dict[str, Any]:
        return {
            "hidden-fields": list(self.hidden_fields),
            "relabeling": dict(self.relabeling),
            "placeholders": dict(self.placeholders),
        }

    def conn_fields(self) -> dict[str, Any]:
        return {f.name: {"label": f.label, "description": f.description, "schema": f.schema()} for f in self.fields}

    def provider_entry(self) -> dict[str, Any]:
        return {
            "connection-type": self.conn_type,
            "hook-class-name": self.hook_class,
            "hook-name": self.hook_name,
            "ui-field-behaviour": self.ui_field_behaviour(),
            "conn-fields": self.conn_fields(),
        }


#: Transport settings every vendor connection accepts (see core.transport).
TRANSPORT_FIELDS: tuple[ConnField, ...] = (
    ConnField("connect_timeout", "Connect timeout (s)", "Seconds to wait for the TCP connection.", "number", 10),
    ConnField("read_timeout", "Read timeout (s)", "Seconds to wait for each read of an answer.", "number", 60),
    ConnField(
        "max_attempts",
        "Max attempts (1 = no retry)",
        "Attempts per request, the first included, on connection errors, timeouts, 5xx and 429.",
        "integer",
        5,
    ),
)

#: Extras still read under their former name: former name -> current name (same meaning).
RENAMED_EXTRAS: dict[str, str] = {"max_retries": "max_attempts"}

LYTICS = ConnectionSpec(
    conn_type="lytics",
    hook_name="Lytics",
    hook_class="airflow_audience_provider.hooks.lytics.LyticsHook",
    conn_name_attr="lytics_conn_id",
    default_conn_name="lytics_default",
    hidden_fields=("schema", "login", "port"),
    relabeling={"host": "API base URL", "password": "API token"},
    placeholders={
        "host": "https://api.lytics.io",
        "password": "Lytics access token (sent as the raw Authorization header)",
    },
    fields=(
        ConnField(
            "account_id",
            "Account ID",
            "Sent as account_id on every call so a multi-account token cannot touch the wrong account.",
        ),
        ConnField(
            "web_app_url",
            "Web app URL",
            "Base URL of the Lytics web app, for the links to segments in the Airflow UI.",
            default="https://app.lytics.com",
        ),
        *TRANSPORT_FIELDS,
    ),
    integration_name="Lytics",
    external_doc_url="https://docs.lytics.com/reference",
    extra_links=("airflow_audience_provider.links.lytics.LyticsSegmentLink",),
    asset_scheme="lytics",
    asset_kinds=("segment",),
)

YANDEX_AUDIENCE = ConnectionSpec(
    conn_type="yandex_audience",
    hook_name="Yandex.Audience",
    hook_class="airflow_audience_provider.hooks.yandex_audience.YandexAudienceHook",
    conn_name_attr="yandex_audience_conn_id",
    default_conn_name="yandex_audience_default",
    hidden_fields=("schema", "port"),
    relabeling={"host": "API base URL", "login": "Yandex login", "password": "OAuth token"},
    placeholders={
        "host": "https://api-audience.yandex.ru",
        "login": "the Yandex login the token belongs to (names the quota bucket, finds own segments)",
        "password": "Yandex OAuth token with Audience rights (sent as 'Authorization: OAuth <token>')",
    },
    fields=(
        ConnField(
            "web_app_url",
            "Web interface URL",
            "Base URL of the Yandex.Audience web interface, for the links to segments in the Airflow UI.",
            default="https://audience.yandex.ru",
        ),
        ConnField(
            "default_region",
            "Default phone region",
            "ISO 3166 region (e.g. RU) for phone numbers written without a country code, such as "
            "8 (999) 555-11-11; an upload operator's default_region overrides it.",
        ),
        ConnField(
            "processing_poll_interval",
            "Processing poll interval (s)",
            "How often a task that must wait for a segment to finish processing (modify_data between "
            "files) looks at it; each look is one read from the daily budget.",
            "number",
            30,
        ),
        ConnField(
            "processing_wait_timeout",
            "Processing wait timeout (s)",
            "How long such a task waits for processing before it fails (Yandex: usually up to 2 hours).",
            "number",
            10800,
        ),
        ConnField(
            "upload_bytes_per_second",
            "Slowest upload rate (bytes/s)",
            "A file upload's read timeout is the connection's read timeout plus the file's size at this rate, "
            "because Yandex answers only after checking the whole file.",
            "number",
            1_000_000,
        ),
        *(
            ConnField(
                f"writes_per_{period}",
                f"Segment writes per {period}",
                f"Client-side quota on segment create/modify requests per login (Yandex documents {quota}).",
                "integer",
                quota,
            )
            for period, quota in (("minute", 10), ("hour", 100), ("day", 500))
        ),
        ConnField(
            "requests_per_day",
            "Requests per day",
            "Client-side daily request budget per login, reads and writes together (Yandex documents 5000).",
            "integer",
            5000,
        ),
        ConnField(
            "requests_per_second",
            "Requests per second (per IP)",
            "Client-side limit shared by every login on this host (Yandex documents 30 per IP).",
            "integer",
            30,
        ),
        *TRANSPORT_FIELDS,
    ),
    integration_name="Yandex.Audience",
    external_doc_url="https://yandex.ru/dev/audience/",
    module="yandex_audience",
    extra_links=("airflow_audience_provider.links.yandex_audience.YandexAudienceSegmentLink",),
    asset_scheme="yandex-audience",
    asset_kinds=("segment",),
)

YANDEX_DIRECT = ConnectionSpec(
    conn_type="yandex_direct",
    hook_name="Yandex Direct",
    hook_class="airflow_audience_provider.hooks.yandex_direct.YandexDirectHook",
    conn_name_attr="yandex_direct_conn_id",
    default_conn_name="yandex_direct_default",
    hidden_fields=("schema", "login", "port"),
    relabeling={"host": "API base URL (optional)", "password": "OAuth token"},
    placeholders={
        "host": "https://api.direct.yandex.com (empty: production, or the sandbox host when 'sandbox' is set)",
        "password": "Yandex OAuth token with Direct API access (sent as 'Authorization: Bearer <token>')",
    },
    fields=(
        ConnField(
            "client_login",
            "Client-Login",
            "Advertiser login to act for (Client-Login header). Required for agency tokens; "
            "operators can override it per task.",
        ),
        ConnField(
            "is_agency",
            "Agency token",
            "The token belongs to an agency: every call must name the client (Client-Login); "
            "a missing login is reported before anything is sent.",
            "boolean",
            False,
        ),
        ConnField(
            "accept_language",
            "Accept-Language",
            "Language of Direct's error and warning texts.",
            default="en",
            enum=("en", "ru", "tr", "uk"),
        ),
        ConnField(
            "use_operator_units",
            "Use-Operator-Units",
            "Agency only: spend the agency's own points instead of the client's.",
            "boolean",
            False,
        ),
        ConnField(
            "sandbox",
            "Direct sandbox",
            "Use Direct's own sandbox (api-sandbox.direct.yandex.com) when no host is set.",
            "boolean",
            False,
        ),
        ConnField(
            "api_version",
            "API version",
            "Path version of the JSON API: v5, or v501 (knows unified ad groups).",
            default="v5",
            enum=("v5", "v501"),
        ),
        ConnField(
            "live4_url",
            "v4 Live URL",
            "URL of the v4 Live JSON API used by GetRetargetingGoals (default: <host>/live/v4/json/).",
        ),
        ConnField(
            "audience_goal_id_offset",
            "Audience goal id offset",
            "Used only to recognise a Yandex.Audience segment id among GetRetargetingGoals: goal id = "
            "offset + segment id (an assumption, see the docs). The goal must still be listed by Direct.",
            "integer",
            2000000000,
        ),
        ConnField(
            "units_reserve",
            "Units reserve",
            "Points to leave unspent: a call is not sent when the remaining points would drop below it.",
            "integer",
            0,
        ),
        ConnField(
            "web_ui_url",
            "Web interface URL",
            "Base URL of the Direct web interface, for the links to retargeting lists.",
            default="https://direct.yandex.ru",
        ),
        *TRANSPORT_FIELDS,
    ),
    integration_name="Yandex Direct",
    external_doc_url="https://yandex.com/dev/direct/doc/en/",
    module="yandex_direct",
    module_kinds=("hooks", "operators", "triggers"),
    extra_links=("airflow_audience_provider.links.yandex_direct.YandexDirectRetargetingListLink",),
)

SEGMENT = ConnectionSpec(
    conn_type="segment",
    hook_name="Twilio Segment",
    hook_class="airflow_audience_provider.hooks.segment.SegmentHook",
    conn_name_attr="segment_conn_id",
    default_conn_name="segment_default",
    hidden_fields=("schema", "login", "port"),
    relabeling={"host": "API base URL (optional)", "password": "Public API token"},
    placeholders={
        "host": "leave empty: derived from the region (https://api.segmentapis.com)",
        "password": "Segment Public API token (sent as Bearer)",
    },
    fields=(
        ConnField(
            "region",
            "Region",
            "Where the workspace lives: 'us' (api.segmentapis.com) or 'eu' (eu1.api.segmentapis.com). "
            "A token only works in its own region. Ignored when the host is set.",
            default="us",
            enum=("us", "eu"),
        ),
        ConnField(
            "api_version",
            "API version",
            "Media-type version pinned on every call: v1 (stable), v1beta or v1alpha (workspaces still "
            "on the alpha API; also selects the alpha rate limits).",
            default="v1",
            enum=("v1", "v1beta", "v1alpha"),
        ),
        ConnField("space_id", "Default space ID", "Engage space used when a task names none."),
        ConnField(
            "workspace_slug",
            "Workspace slug",
            "The workspace's slug in app.segment.com URLs, for the links to audiences in the Airflow UI.",
        ),
        ConnField(
            "app_url",
            "Segment app URL",
            "Base URL of the Segment app for links; default by region (https://app.segment.com or "
            "https://eu1.app.segment.com).",
        ),
        ConnField(
            "rate_limits",
            "Rate limits (JSON)",
            "Client-side limits in requests per minute by operation, overriding the documented ones, e.g. "
            '{"update_audience": 10, "create_audience_preview": 5}.',
        ),
        *TRANSPORT_FIELDS,
    ),
    integration_name="Twilio Segment",
    external_doc_url="https://docs.segmentapis.com/tag/Audiences",
    extra_links=("airflow_audience_provider.links.segment.SegmentAudienceLink",),
    asset_scheme="segment",
    asset_kinds=("audience",),
)

CRITEO = ConnectionSpec(
    conn_type="criteo",
    hook_name="Criteo",
    hook_class="airflow_audience_provider.hooks.criteo.CriteoHook",
    conn_name_attr="criteo_conn_id",
    default_conn_name="criteo_default",
    hidden_fields=("schema", "port"),
    relabeling={"host": "API base URL", "login": "Client ID", "password": "Client secret"},
    placeholders={
        "host": "https://api.criteo.com",
        "login": "OAuth2 client id of the Criteo app",
        "password": "OAuth2 client secret of the Criteo app",
    },
    fields=(
        ConnField(
            "api_version",
            "API version",
            "Criteo API version in every path (YYYY-MM, or 'preview'); audience create/update/delete of "
            "Retail Media always use 'preview'.",
            default="2026-07",
        ),
        ConnField(
            "api",
            "API",
            "retail_media (accounts, retailers, line items) or marketing_solutions (advertisers, ad sets).",
            default="retail_media",
            enum=("retail_media", "marketing_solutions"),
        ),
        ConnField("account_id", "Default account ID", "Retail Media account used when a task names none."),
        ConnField(
            "advertiser_id", "Default advertiser ID", "Marketing Solutions advertiser used when a task names none."
        ),
        ConnField(
            "token_url",
            "Token URL",
            "OAuth2 token endpoint; default <API base URL>/oauth2/token.",
        ),
        ConnField(
            "ui_url",
            "Criteo UI URL",
            "Base URL of the Criteo web app, for the links to segments and audiences in the Airflow UI.",
            default="https://app.criteo.com",
        ),
        *TRANSPORT_FIELDS,
    ),
    integration_name="Criteo",
    external_doc_url="https://developers.criteo.com/retail-media/docs/audience-overview",
    extra_links=(
        "airflow_audience_provider.links.criteo.CriteoSegmentLink",
        "airflow_audience_provider.links.criteo.CriteoAudienceLink",
    ),
    asset_scheme="criteo",
    asset_kinds=("segment", "audience"),
)

# Each vendor adds its ConnectionSpec above and its name to this tuple (one line per vendor).
CONNECTION_SPECS: dict[str, ConnectionSpec] = {
    spec.conn_type: spec for spec in (LYTICS, YANDEX_DIRECT, SEGMENT, CRITEO, YANDEX_AUDIENCE)
}
