"""Authentication strategies for the five vendors, as ``requests`` auth objects.

* :class:`TokenHeaderAuth` covers the static-token styles: the raw token (Lytics), ``OAuth <token>``
  (Yandex.Audience) and ``Bearer <token>`` (Twilio Segment, Yandex Direct).
* :class:`OAuth2ClientCredentials` mints, caches and refreshes short-lived tokens (Criteo); with
  :data:`PROCESS_TOKENS` one token serves every hook, task thread and trigger of the process
  until shortly before it expires, and, through the token store ``[audience] token_cache``
  names (:mod:`~airflow_audience_provider.core.tokencache`), every task process and the
  triggerer of the host (or of every host sharing a Redis).

Every token, static or minted, is handed to Airflow's secret masker so it cannot reach a log.
"""

from __future__ import annotations

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

from airflow_audience_provider.core.errors import AudienceAuthenticationError
from airflow_audience_provider.core.offload import to_thread
from airflow_audience_provider.core.tokencache import CachedToken, TokenStore, configured_token_store

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
    """One cached access token and the lock that makes minting it single-flight in the process."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    token: str | None = None
    expires_at: float = 0.0
    refresh_at: float = 0.0


_UNRESOLVED: Any = object()


class TokenCache:
    """Access tokens keyed by connection identity, shared by every auth object that uses the cache.

    The key is the token URL, the client id and a SHA-256 digest of the client secret: a rotated
    secret gets a token of its own, and the secret never sits in a key. Minting is single-flight per
    key: threads (and the worker threads triggers' requests run on) that need the same token wait
    for one token request instead of each sending their own.

    :param store: the shared level behind this process' memory (see
        :mod:`~airflow_audience_provider.core.tokencache`); ``None``: this process only.
    :param configured: resolve the store from ``[audience] token_cache`` on first use instead.
    """

    def __init__(self, store: TokenStore | None = None, *, configured: bool = False) -> None:
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str, str], _TokenSlot] = {}
        self._configured = configured
        self._store: Any = _UNRESOLVED if configured else store

    @staticmethod
    def identity(token_url: str, client_id: str, client_secret: str) -> tuple[str, str, str]:
        return (token_url, client_id, hashlib.sha256(client_secret.encode()).hexdigest())

    def slot(self, identity: tuple[str, str, str]) -> _TokenSlot:
        with self._lock:
            return self._slots.setdefault(identity, _TokenSlot())

    def store(self) -> TokenStore | None:
        """The shared level, resolved from the configuration once per process if so asked."""
        with self._lock:
            if self._store is _UNRESOLVED:
                self._store = None  # a configuration error below surfaces once, then memory only
                self._store = configured_token_store()
            return self._store  # type: ignore[no-any-return]

    def reconfigure(self, store: TokenStore | None = None) -> None:
        """Use ``store`` from now on (or, for a configured cache, read the configuration again)."""
        with self._lock:
            self._store = _UNRESOLVED if self._configured and store is None else store

    def clear(self) -> None:
        """Forget every token of this process (tests; a process that wants fresh tokens)."""
        with self._lock:
            self._slots.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for slot in self._slots.values() if slot.token is not None)


#: The cache of this process: every hook, task thread and trigger of a worker or triggerer shares
#: it, and it shares tokens with other processes through the store ``[audience] token_cache`` names.
PROCESS_TOKENS = TokenCache(configured=True)


class OAuth2ClientCredentials(AuthBase):
    """OAuth2 client-credentials grant with a cached token refreshed before it expires.

    The token is fetched lazily, cached until ``refresh_margin`` seconds before ``expires_in``
    runs out (so a long upload never sends an expired token), and shared by every request of
    the hook; with ``cache=PROCESS_TOKENS`` also by every hook of the process with the same
    connection identity (token URL, client id, secret), and through the cache's store by other
    processes: a process that needs a token first reads the store, and only one process at a
    time mints while the others wait for its token.
    :meth:`~airflow_audience_provider.core.auth.OAuth2ClientCredentials.invalidate` forgets it
    here and in the store; the transport calls that once on a 401 and retries.

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
        self._cache = cache if cache is not None else TokenCache()  # an empty cache is falsy: test for None
        identity = TokenCache.identity(token_url, client_id, client_secret)
        self._slot = self._cache.slot(identity)
        self._shared_key = _shared_key(identity)
        #: tokens this object minted itself (a shared cache may have handed it one minted elsewhere)
        self.tokens_minted = 0
        mask_secret(client_secret)

    def token(self) -> str:
        """A valid access token: this process' own, one another process stored, or a new one."""
        slot = self._slot
        with slot.lock:
            if slot.token is not None and self._clock() < slot.refresh_at:
                return slot.token
            store = self._cache.store()
            if store is None:
                return self._mint(slot)
            if self._adopt(store, slot):
                return slot.token  # type: ignore[return-value]
            with store.mint_lock(self._shared_key):
                if self._adopt(store, slot):  # another process minted while this one waited
                    return slot.token  # type: ignore[return-value]
                token = self._mint(slot)
                if math.isfinite(slot.expires_at):  # a token without a lifetime stays in the process
                    store.put(self._shared_key, CachedToken(token, slot.expires_at, slot.refresh_at), self._clock())
            return token

    def _adopt(self, store: TokenStore, slot: _TokenSlot) -> bool:
        entry = store.get(self._shared_key)
        if entry is None or not entry.fresh(self._clock()):
            return False
        mask_secret(entry.token)  # the masker is per process: register it here too
        slot.token, slot.expires_at, slot.refresh_at = entry.token, entry.expires_at, entry.refresh_at
        log.debug("Reusing an OAuth2 access token from the shared token cache")
        return True

    def _mint(self, slot: _TokenSlot) -> str:
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
            raise AudienceAuthenticationError("The token endpoint answered without an access_token")
        mask_secret(token)
        slot.token = str(token)
        lifetime = answer.get("expires_in")
        if lifetime in (None, ""):
            # No lifetime given (RFC 6749 makes it optional): keep the token until the
            # vendor refuses it; the transport then invalidates it once and retries.
            slot.expires_at = slot.refresh_at = math.inf
        else:
            # A lifetime shorter than the margin must not mean "mint for every request".
            slot.expires_at = self._clock() + float(lifetime)
            slot.refresh_at = slot.expires_at - min(self.refresh_margin, float(lifetime) / 2)
        self.tokens_minted += 1
        log.info("Minted an OAuth2 access token (valid %s s)", answer.get("expires_in"))
        return slot.token

    async def atoken(self) -> str:
        """:meth:`token` for coroutines: a mint (or the wait for another's) runs in a worker thread."""
        return await to_thread(self.token)

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token, here and in the shared store; with ``token``, only if it is still
        that one (a token another thread or process already replaced after the same 401 is kept)."""
        with self._slot.lock:
            dropped = token if token is not None else self._slot.token
            if token is None or token == self._slot.token:
                self._slot.token = None
                self._slot.expires_at = self._slot.refresh_at = 0.0
            store = self._cache.store()
            if store is not None and dropped is not None:
                store.drop(self._shared_key, dropped)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"


def _shared_key(identity: tuple[str, str, str]) -> str:
    """The identity's name in a token store: a hash revealing neither the client id nor the secret."""
    return hashlib.sha256("\0".join(identity).encode()).hexdigest()[:40]
