"""Authentication strategies for the five vendors, as ``requests`` auth objects.

* :class:`TokenHeaderAuth` covers the static-token styles: the raw token (Lytics), ``OAuth <token>``
  (Yandex.Audience) and ``Bearer <token>`` (Twilio Segment, Yandex Direct).
* :class:`OAuth2ClientCredentials` mints, caches and refreshes short-lived tokens (Criteo); with
  :data:`PROCESS_TOKENS` one token serves every hook, task thread and trigger of the process
  until shortly before it expires.

Every token, static or minted, is handed to Airflow's secret masker so it cannot reach a log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.auth import AuthBase

log = logging.getLogger(__name__)


def mask_secret(value: str, name: str | None = None) -> None:
    """Register ``value`` with Airflow's secret masker (task and supervisor processes)."""
    if not value:
        return
    try:
        from airflow.sdk.log import mask_secret as _mask
    except ImportError:  # pragma: no cover - Airflow 3.1 keeps it in the execution-time package
        from airflow.sdk.execution_time.secrets_masker import mask_secret as _mask  # type: ignore[no-redef]
    _mask(value, name)


class TokenHeaderAuth(AuthBase):
    """Put a static token in a header, with an optional scheme word before it.

    :param token: the secret, usually the connection's password field.
    :param scheme: ``None`` for the raw token, or ``"OAuth"`` / ``"Bearer"``.
    :param header: the header name, ``Authorization`` for every vendor we know.
    """

    def __init__(self, token: str, scheme: str | None = None, header: str = "Authorization") -> None:
        self._token = token
        self.scheme = scheme
        self.header = header
        mask_secret(token)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[self.header] = f"{self.scheme} {self._token}" if self.scheme else self._token
        return request

    def __repr__(self) -> str:  # never print the token
        return f"TokenHeaderAuth(scheme={self.scheme!r}, header={self.header!r})"


@dataclass
class _TokenSlot:
    """One cached access token and the lock that makes minting it single-flight."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    token: str | None = None
    expires_at: float = 0.0
    margin: float = 0.0


class TokenCache:
    """Access tokens keyed by connection identity, shared by every auth object that uses the cache.

    The key is the token URL, the client id and a SHA-256 digest of the client secret: a rotated
    secret gets a token of its own, and the secret never sits in a key. Minting is single-flight per
    key: threads (and the worker threads triggers' requests run on) that need the same token wait
    for one token request instead of each sending their own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str, str], _TokenSlot] = {}

    @staticmethod
    def identity(token_url: str, client_id: str, client_secret: str) -> tuple[str, str, str]:
        return (token_url, client_id, hashlib.sha256(client_secret.encode()).hexdigest())

    def slot(self, identity: tuple[str, str, str]) -> _TokenSlot:
        with self._lock:
            return self._slots.setdefault(identity, _TokenSlot())

    def clear(self) -> None:
        """Forget every token (tests; a process that wants fresh tokens)."""
        with self._lock:
            self._slots.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for slot in self._slots.values() if slot.token is not None)


#: The cache of this process: every hook, task thread and trigger of a worker or triggerer shares it.
PROCESS_TOKENS = TokenCache()


class OAuth2ClientCredentials(AuthBase):
    """OAuth2 client-credentials grant with a cached token refreshed before it expires.

    The token is fetched lazily, cached until ``refresh_margin`` seconds before ``expires_in``
    runs out (so a long upload never sends an expired token), and shared by every request of
    the hook; with ``cache=PROCESS_TOKENS`` also by every hook of the process with the same
    connection identity (token URL, client id, secret).
    :meth:`~airflow_audience_provider.core.auth.OAuth2ClientCredentials.invalidate` forgets it; the
    transport calls that once on a 401 and retries.

    :param token_url: the vendor's token endpoint.
    :param post: callable doing the token POST (the transport passes its own session so the
        token call gets timeouts and the User-Agent); it returns the decoded JSON answer.
    :param cache: where tokens are kept; default: a cache of this object alone.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        post: Callable[[str, dict[str, str]], dict[str, Any]],
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.time,
        cache: TokenCache | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self._post = post
        self.refresh_margin = refresh_margin
        self._clock = clock
        cache = cache if cache is not None else TokenCache()  # an empty cache is falsy: test for None
        self._slot = cache.slot(TokenCache.identity(token_url, client_id, client_secret))
        #: tokens this object minted itself (a shared cache may have handed it one minted elsewhere)
        self.tokens_minted = 0
        mask_secret(client_secret)

    def token(self) -> str:
        """A valid access token, minting a new one when the cached one is (nearly) expired."""
        slot = self._slot
        with slot.lock:
            if slot.token is None or self._clock() >= slot.expires_at - slot.margin:
                answer = self._post(
                    self.token_url,
                    {
                        "grant_type": "client_credentials",
                        "client_id": self.client_id,
                        "client_secret": self._client_secret,
                    },
                )
                token = answer.get("access_token")
                if not token:
                    from airflow_audience_provider.core.errors import AudienceAuthenticationError

                    raise AudienceAuthenticationError("The token endpoint answered without an access_token")
                mask_secret(token)
                slot.token = str(token)
                lifetime = answer.get("expires_in")
                if lifetime in (None, ""):
                    # No lifetime given (RFC 6749 makes it optional): keep the token until the
                    # vendor refuses it; the transport then invalidates it once and retries.
                    slot.expires_at, slot.margin = math.inf, 0.0
                else:
                    # A lifetime shorter than the margin must not mean "mint for every request".
                    slot.expires_at = self._clock() + float(lifetime)
                    slot.margin = min(self.refresh_margin, float(lifetime) / 2)
                self.tokens_minted += 1
                log.info("Minted an OAuth2 access token (valid %s s)", answer.get("expires_in"))
            return slot.token

    async def atoken(self) -> str:
        """:meth:`token` for coroutines: a mint (or the wait for another's) runs in a worker thread."""
        return await asyncio.to_thread(self.token)

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token; with ``token``, only if it is still that one (a token another
        thread already replaced after the same 401 is kept)."""
        with self._slot.lock:
            if token is None or token == self._slot.token:
                self._slot.token = None
                self._slot.expires_at = 0.0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"
