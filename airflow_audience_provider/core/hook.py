"""The base hook every vendor hook extends: connection resolution (sync and async), the
transport built from it, ``test_connection()`` and the connection-form classmethods.

A vendor hook supplies its :class:`~airflow_audience_provider.connections.ConnectionSpec`,
its :class:`~airflow_audience_provider.core.transport.VendorProfile`, a default host, how to
authenticate (``build_auth()``) and one cheap
read for ``probe()``. It may adjust the client-side quotas per connection
(:meth:`~airflow_audience_provider.core.hook.AudienceHook.rate_limits`) and watch every answer
with the endpoint class that was called
(:meth:`~airflow_audience_provider.core.hook.AudienceHook.observe_response`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import requests
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.sdk import BaseHook

from airflow_audience_provider.connections import RENAMED_EXTRAS, ConnectionSpec
from airflow_audience_provider.core.auth import PROCESS_TOKENS, OAuth2ClientCredentials
from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceConfigurationError,
    AudienceError,
    AudienceValidationError,
)
from airflow_audience_provider.core.ratelimit import RateLimit
from airflow_audience_provider.core.transport import RetryPolicy, Timeouts, Transport, VendorProfile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionSettings:
    """The parts of an Airflow connection a vendor hook reads, already decoded."""

    conn_id: str
    conn_type: str | None
    host: str | None
    login: str | None
    password: str | None
    port: int | None
    schema: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def get_extra(self, key: str, default: Any = None) -> Any:
        """An extra field by its bare name, or by the ``extra__<type>__<key>`` name older UIs wrote."""
        for name in (key, f"extra__{self.conn_type}__{key}"):
            value = self.extra.get(name)
            if value not in (None, ""):
                return value
        return default

    def get_choice(self, key: str, default: str, choices: Collection[str], expected: str) -> str:
        """An extra field trimmed and lower-cased, which must be one of ``choices`` (``expected`` says which)."""
        value = str(self.get_extra(key, default)).strip().lower()
        if value not in choices:
            raise AudienceConfigurationError(
                f"Airflow connection '{self.conn_id}': {key} must be {expected}, got {value!r}"
            )
        return value

    def require(self, value: str | None, field_label: str) -> str:
        if not value:
            raise AudienceConfigurationError(
                f"Airflow connection '{self.conn_id}' has no {field_label}; set it in the connection"
            )
        return value


_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off", ""})


def check_extras(spec: ConnectionSpec, settings: ConnectionSettings) -> None:
    """Check the connection's extra fields against the form's declared types, before any request.

    A malformed value (``"soon"`` for a timeout, ``"maybe"`` for a flag, a value outside the
    field's choices) raises
    :class:`~airflow_audience_provider.core.errors.AudienceConfigurationError` naming the connection and the
    field, instead of surfacing later as a bare vendor error. URI-form connections carry every
    extra as a string, so numbers and flags are accepted in their string forms too.
    """
    fields = {f.name: f for f in spec.fields}
    checks = [(f.name, f) for f in spec.fields]
    checks += [(old, fields[new]) for old, new in RENAMED_EXTRAS.items() if new in fields]
    for name, spec_field in checks:
        value = settings.get_extra(name)
        if value is None:
            continue
        problem = None
        if spec_field.type == "boolean":
            if not isinstance(value, bool) and str(value).strip().lower() not in _TRUE_WORDS | _FALSE_WORDS:
                problem = "must be true or false"
        elif spec_field.type in ("integer", "number"):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = None
            if number is None or isinstance(value, bool) or not math.isfinite(number):
                problem = f"must be a{'n integer' if spec_field.type == 'integer' else ' number'}"
            elif spec_field.type == "integer" and not number.is_integer():
                problem = "must be an integer"
        if problem is None and spec_field.enum and str(value) not in spec_field.enum:
            problem = f"must be one of {', '.join(spec_field.enum)}"
        if problem:
            raise AudienceConfigurationError(
                f"Airflow connection '{settings.conn_id}': extra field '{name}' {problem}, "
                f"got {value!r} ({spec_field.label})"
            )


def _max_attempts(settings: ConnectionSettings) -> int:
    """Attempts per request from the ``max_attempts`` extra (``max_retries`` is its former name)."""
    if settings.get_extra("max_attempts") is None and settings.get_extra("max_retries") is not None:
        log.warning(
            "Airflow connection '%s': extra 'max_retries' is deprecated; it means attempts, so rename it "
            "to 'max_attempts' (same value)",
            settings.conn_id,
        )
        return int(_number(settings, "max_retries", RetryPolicy.max_attempts))
    return int(_number(settings, "max_attempts", RetryPolicy.max_attempts))


def _number(settings: ConnectionSettings, key: str, default: float) -> float:
    raw = settings.get_extra(key, default)
    try:
        number = float(raw)  # URI-form extras arrive as strings
    except (TypeError, ValueError):
        raise AudienceConfigurationError(
            f"Airflow connection '{settings.conn_id}': extra field '{key}' must be a number, got {raw!r}"
        ) from None
    if number <= 0:
        raise AudienceConfigurationError(
            f"Airflow connection '{settings.conn_id}': extra field '{key}' must be positive, got {raw!r}"
        )
    return number


class AudienceHook(BaseHook):
    """Shared machinery of the vendor hooks. Not used directly.

    :param conn_id: the Airflow connection id.
    :param timeouts: (connect, read) timeouts overriding the connection's.
    :param retry: retry policy overriding the defaults and the connection's ``max_attempts``.
    """

    spec: ClassVar[ConnectionSpec]
    profile: ClassVar[VendorProfile]
    default_host: ClassVar[str]
    conn_name_attr: ClassVar[str]
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A vendor hook names its ``spec``; the attributes Airflow reads from a hook class come from it
        (unless the class sets them itself)."""
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is not None:
            for attr in ("conn_name_attr", "default_conn_name", "conn_type", "hook_name"):
                if attr not in cls.__dict__:
                    setattr(cls, attr, getattr(spec, attr))

    def __init__(
        self,
        conn_id: str,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self._timeouts_override = timeouts
        self._retry_override = retry
        self._settings: ConnectionSettings | None = None
        self._transport: Transport | None = None

    # -- connection -------------------------------------------------------------------------

    @property
    def vendor(self) -> str:
        return self.profile.name

    def settings(self) -> ConnectionSettings:
        """The connection, resolved once per hook (sync path: operators and sensors)."""
        if self._settings is None:
            conn = self.get_connection(self.conn_id)
            self._settings = self._decode(conn, conn.extra_dejson)
        return self._settings

    async def asettings(self) -> ConnectionSettings:
        """The connection, resolved without blocking the event loop (triggers)."""
        if self._settings is None:
            conn = await get_async_connection(self.conn_id, hook=self)
            extra = await get_async_extra_dejson(conn)
            self._settings = self._decode(conn, extra)
        return self._settings

    def _decode(self, conn: Any, extra: dict[str, Any]) -> ConnectionSettings:
        conn_type = getattr(conn, "conn_type", None)
        if conn_type and conn_type.replace("-", "_") != self.spec.conn_type:
            raise AudienceConfigurationError(
                f"Airflow connection '{self.conn_id}' is of type '{conn_type}', "
                f"but {type(self).__name__} needs a '{self.spec.conn_type}' connection"
            )
        settings = ConnectionSettings(
            conn_id=self.conn_id,
            conn_type=self.spec.conn_type,
            host=conn.host,
            login=conn.login,
            password=conn.password,
            port=conn.port,
            schema=conn.schema,
            extra=dict(extra or {}),
        )
        check_extras(self.spec, settings)
        return settings

    # -- transport --------------------------------------------------------------------------

    def base_url(self, settings: ConnectionSettings) -> str:
        """Host from the connection (scheme optional, port honoured) or the vendor default."""
        host = (settings.host or self.default_host).rstrip("/")
        if "://" not in host:
            host = f"https://{host}"
        if settings.port and host.count(":") < 2:
            host = f"{host}:{settings.port}"
        return host

    def build_auth(self, settings: ConnectionSettings, session: requests.Session) -> requests.auth.AuthBase:
        raise NotImplementedError

    def budget_key(self, settings: ConnectionSettings) -> str:
        """Which quota bucket this connection draws from: by default the host and login/account."""
        return f"{self.base_url(settings)}|{settings.login or ''}|{settings.get_extra('account_id', '')}"

    def extra_headers(self, settings: ConnectionSettings) -> dict[str, str]:
        return {}

    def credentials_hint(self, settings: ConnectionSettings) -> str:
        """What to check when the vendor refuses the credentials: the connection and its field."""
        field_label = self.spec.relabeling.get("password", "password")
        return f"check the {field_label} (password field) of Airflow connection '{settings.conn_id}'"

    def rate_limits(self, settings: ConnectionSettings) -> Mapping[str, RateLimit]:
        """The client-side quotas of this connection by endpoint class (``"default"`` for the rest).

        The vendor's documented quotas (``profile.rate_limits``) unless a vendor reads overrides
        from the connection (an API version with other limits, a contract with higher ones).
        """
        return self.profile.rate_limits

    def observe_response(self, response: requests.Response, endpoint_class: str) -> None:
        """Called with every answer, errors included, and the endpoint class the call named.

        For vendors that report quotas or prices in headers on every answer. It must not raise
        (the transport logs and ignores an error). A vendor's "budget used up" header belongs in
        ``VendorProfile.budget_spent`` instead, where the rate limiter shares it with every client.
        """

    def build_transport(self, settings: ConnectionSettings) -> Transport:
        timeouts = self._timeouts_override or Timeouts(
            connect=_number(settings, "connect_timeout", Timeouts.connect),
            read=_number(settings, "read_timeout", Timeouts.read),
        )
        retry = self._retry_override or RetryPolicy(max_attempts=_max_attempts(settings))
        session = requests.Session()
        transport = Transport(
            dataclasses.replace(self.profile, rate_limits=dict(self.rate_limits(settings))),
            self.base_url(settings),
            self.build_auth(settings, session),
            timeouts=timeouts,
            retry=retry,
            budget_key=self.budget_key(settings),
            headers=self.extra_headers(settings),
            session=session,
            credentials_hint=self.credentials_hint(settings),
        )
        if type(self).observe_response is not AudienceHook.observe_response:
            transport.response_observers.append(self.observe_response)
        return transport

    def oauth2_client_credentials(
        self, settings: ConnectionSettings, session: requests.Session, token_url: str, client_id: str, secret: str
    ) -> OAuth2ClientCredentials:
        """OAuth2 client-credentials auth whose token every hook and trigger of this process shares.

        A worker's task threads and a triggerer's triggers using the same connection identity
        (token URL, client id, secret) reuse one token until shortly before it expires, instead
        of minting one per hook; a 401 replaces it once for all of them.
        """
        return OAuth2ClientCredentials(
            token_url, client_id, secret, self.oauth2_token_poster(settings, session), cache=PROCESS_TOKENS
        )

    def oauth2_token_poster(self, settings: ConnectionSettings, session: requests.Session) -> Any:
        """The token POST for :class:`~airflow_audience_provider.core.auth.OAuth2ClientCredentials`,
        sent through the shared transport (timeouts, retries, rate limit, typed errors).

        Minting a second token is harmless, so the POST is retried like an idempotent call. A
        400/401 from a token endpoint (RFC 6749 §5.2: ``invalid_client``, ``invalid_grant``) is
        a credentials problem and raised as
        :class:`~airflow_audience_provider.core.errors.AudienceAuthenticationError` naming the
        connection fields.
        """
        token_transport = Transport(
            dataclasses.replace(self.profile, rate_limits=dict(self.rate_limits(settings))),  # the same budgets
            self.base_url(settings),
            None,
            timeouts=self._timeouts_override,
            retry=self._retry_override,
            budget_key=self.budget_key(settings),
            headers={"Accept": "application/json"},
            session=session,
        )
        hint = (
            f"check the {self.spec.relabeling.get('login', 'login')} (login) and "
            f"{self.spec.relabeling.get('password', 'password')} (password) of Airflow connection '{settings.conn_id}'"
        )

        def post(url: str, form: dict[str, str]) -> dict[str, Any]:
            try:
                answer = token_transport.json("POST", url, data=form, idempotent=True, endpoint_class="token")
            except (AudienceAuthenticationError, AudienceValidationError) as exc:
                raise exc.restated(
                    f"{self.vendor} refused the client credentials: {exc.message}; {hint}",
                    as_class=AudienceAuthenticationError,
                ) from exc
            return dict(answer or {})

        return post

    def get_conn(self) -> Transport:
        """The authenticated transport for this connection (built once per hook)."""
        if self._transport is None:
            self._transport = self.build_transport(self.settings())
        return self._transport

    @property
    def transport(self) -> Transport:
        return self.get_conn()

    async def aget_conn(self) -> Transport:
        """:meth:`get_conn` for triggers: the connection is resolved asynchronously."""
        if self._transport is None:
            settings = await self.asettings()
            self._transport = self.build_transport(settings)
        return self._transport

    # -- connection test --------------------------------------------------------------------

    def probe(self) -> str:
        """One cheap authenticated read; returns a short description of what it saw."""
        raise NotImplementedError

    def test_connection(self) -> tuple[bool, str]:
        """Used by the UI's Test button, ``airflow connections test`` and the REST API.

        Never raises: a failure comes back as ``(False, <message naming what is wrong>)``.
        """
        try:
            return True, self.probe()
        except AudienceError as exc:
            return False, str(exc)
        except Exception as exc:  # the UI must show a message, never a stack trace
            return False, f"{type(exc).__name__}: {exc}"

    # -- connection form (Airflow 3.1 reads these; 3.2+ reads the provider info) -------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return cls.spec.ui_field_behaviour()

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        try:
            from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
            from wtforms import IntegerField, PasswordField, StringField
            from wtforms.validators import Optional
        except ImportError:  # Airflow 3.2+ builds the form from the provider info instead
            return {}
        widgets: dict[str, Any] = {}
        for f in cls.spec.fields:
            if f.secret:
                widgets[f.name] = PasswordField(f.label, widget=BS3PasswordFieldWidget())
            elif f.type == "integer":
                widgets[f.name] = IntegerField(f.label, validators=[Optional()], default=f.default)
            else:
                widgets[f.name] = StringField(f.label, widget=BS3TextFieldWidget(), default=f.default)
        return widgets
