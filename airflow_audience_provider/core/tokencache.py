"""Where minted OAuth2 access tokens are shared beyond one process, encrypted at rest.

Airflow 3 runs every task in a process of its own, so a token kept in memory serves one task. A
*token store* is the second level behind the in-process cache of
:class:`~airflow_audience_provider.core.auth.TokenCache`, chosen by ``[audience] token_cache``
(:func:`token_store_from_setting`):

* **file**: one file per credential identity in a private directory (0700, files 0600), shared
  by the task processes and the triggerer of one host; written atomically (temporary file and
  rename); a per-identity ``flock`` makes one process mint while the others wait and reuse;
* **redis**: ``SET key value PX ttl`` on a Redis server, shared by every host, with a short
  ``SET NX PX`` mint lock;
* **process**: no store, each process keeps its own tokens.

Entries are sealed with Airflow's Fernet key (``[core] fernet_key``, the key that protects
connection passwords in the metadata database). Without a valid key nothing is shared. Names
(file names, Redis keys) are hashes of the token URL, the client id and a hash of the secret, so
different credentials never share a token and no secret or client id appears in a name. A store
that fails (unreadable entry, full disk, unreachable Redis) is never an error: the token is
minted and kept in the process as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from airflow_audience_provider.core.ratelimit import (
    CONFIG_SECTION,
    configured_setting,
    is_redis_error,
    redacted_url,
    redis_from_url,
)

log = logging.getLogger(__name__)

#: Airflow configuration option choosing the store (also ``AIRFLOW__AUDIENCE__TOKEN_CACHE``).
CONFIG_OPTION = "token_cache"
#: Directory of the default file store, under ``$AIRFLOW_HOME``.
DEFAULT_DIRECTORY = "audience_tokens"
#: How long a process waits for another one's mint before minting itself.
MINT_LOCK_SECONDS = 30.0


@dataclass(frozen=True)
class CachedToken:
    """A token as stored: handed out until ``refresh_at`` (epoch seconds), valid until ``expires_at``."""

    token: str
    expires_at: float
    refresh_at: float

    def fresh(self, now: float) -> bool:
        return now < self.refresh_at


class TokenStore(Protocol):
    """The shared level of the token cache. No method raises for a store problem."""

    def get(self, key: str) -> CachedToken | None:
        """The entry under ``key``; ``None`` if absent, unreadable or sealed with another key."""
        ...

    def put(self, key: str, entry: CachedToken, now: float) -> None:
        """Store ``entry`` until its ``refresh_at``."""
        ...

    def drop(self, key: str, token: str) -> None:
        """Remove the entry under ``key`` if it still holds ``token`` (a 401 refused it)."""
        ...

    def mint_lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Held while minting for ``key``; waits at most :data:`MINT_LOCK_SECONDS` for another holder."""
        ...

    def clear(self) -> None:
        """Remove every entry of this store."""
        ...


class Sealer:
    """Encrypts entries with Airflow's Fernet key(s); a comma-separated key list rotates as in Airflow."""

    def __init__(self, fernet: Any) -> None:
        self._fernet = fernet

    @classmethod
    def from_key(cls, key: str) -> Sealer:
        """:raises ValueError: ``key`` is not a (comma-separated list of) Fernet key(s)."""
        from cryptography.fernet import Fernet, MultiFernet  # lazy: only where a store is used

        parts = [part.strip() for part in key.split(",") if part.strip()]
        if not parts:
            raise ValueError("empty")
        return cls(MultiFernet([Fernet(part.encode()) for part in parts]))

    def seal(self, key: str, entry: CachedToken) -> bytes:
        plain = {"k": key, "t": entry.token, "e": entry.expires_at, "r": entry.refresh_at}
        return bytes(self._fernet.encrypt(json.dumps(plain).encode()))

    def open(self, key: str, blob: bytes) -> CachedToken | None:
        """The entry, or ``None`` for anything that is not an entry for ``key`` sealed with our key."""
        try:
            plain = json.loads(self._fernet.decrypt(blob))
            if plain.get("k") != key:  # an entry copied under another identity's name
                return None
            return CachedToken(str(plain["t"]), float(plain["e"]), float(plain["r"]))
        except Exception:  # InvalidToken, torn or foreign content: ignored, then replaced
            return None


class _Warner:
    """At most one warning a minute per store, naming the error type only."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._last = 0.0

    def __call__(self, exc: BaseException) -> None:
        if self._last and time.monotonic() - self._last < 60:
            return
        self._last = time.monotonic()
        log.warning(
            "OAuth token cache %s failed (%s); tokens are kept per process meanwhile", self.what, type(exc).__name__
        )


class UnsafeTokenDirectory(Exception):
    """The directory is not private to this user (a symlink, another owner, not a directory)."""


class FileTokenStore:
    """Entries shared by the processes of one host, one file per identity in a private directory.

    ``<key>.token`` holds the sealed entry (replaced by rename, so readers never see half of one);
    ``<key>.lock`` is ``flock``-ed while a process mints, so processes racing for an expired token
    send one token request and the others read its result.
    """

    #: Entries and temporary files not written for this long are removed when a new entry is written.
    STALE_SECONDS = 86400.0

    def __init__(self, directory: Path, sealer: Sealer, lock_seconds: float = MINT_LOCK_SECONDS) -> None:
        self.directory = Path(directory)
        self._sealer = sealer
        self._lock_seconds = lock_seconds
        self._ready = False
        self._setup = threading.Lock()
        self._warn = _Warner(f"directory {self.directory}")

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.directory)!r})"

    def _dir(self) -> Path:
        """The directory, created 0700 if missing, refused if it is not private to this user."""
        with self._setup:
            if not self._ready:
                self.directory.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.directory, 0o700)
                info = os.lstat(self.directory)
                if not stat.S_ISDIR(info.st_mode):
                    raise UnsafeTokenDirectory(f"{self.directory} is not a directory (or is a symlink)")
                if info.st_uid != os.geteuid():
                    raise UnsafeTokenDirectory(f"{self.directory} belongs to another user")
                if stat.S_IMODE(info.st_mode) & 0o077:
                    os.chmod(self.directory, 0o700)  # ours, but others could read it: close it
                self._ready = True
            return self.directory

    def get(self, key: str) -> CachedToken | None:
        try:
            fd = os.open(self._dir() / f"{key}.token", os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except (OSError, UnsafeTokenDirectory) as exc:
            self._warn(exc)
            return None
        with os.fdopen(fd, "rb") as handle:
            return self._sealer.open(key, handle.read())

    def put(self, key: str, entry: CachedToken, now: float) -> None:
        try:
            directory = self._dir()
            fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)  # mode 0600
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(self._sealer.seal(key, entry))
                os.replace(temporary, directory / f"{key}.token")
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            self._prune(directory, key)
        except (OSError, UnsafeTokenDirectory) as exc:
            self._warn(exc)

    def drop(self, key: str, token: str) -> None:
        with self.mint_lock(key):  # a process minting the replacement must not lose it
            entry = self.get(key)
            if entry is not None and entry.token != token:
                return
            try:
                os.unlink(self._dir() / f"{key}.token")
            except FileNotFoundError:
                pass
            except (OSError, UnsafeTokenDirectory) as exc:
                self._warn(exc)

    @contextlib.contextmanager
    def mint_lock(self, key: str) -> Iterator[None]:
        try:
            fd = os.open(self._dir() / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except (OSError, UnsafeTokenDirectory) as exc:
            self._warn(exc)
            yield
            return
        try:
            deadline, pause = time.monotonic() + self._lock_seconds, 0.02
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        self._warn(exc)  # a file system without flock: mint without the lock
                        break
                    if time.monotonic() >= deadline:
                        log.info("Another process has been minting this OAuth token for long; minting here too")
                        break
                    time.sleep(pause)
                    pause = min(pause * 2, 0.25)
            yield
        finally:
            os.close(fd)  # releases the flock

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for path in self.directory.iterdir():
                if path.suffix == ".token" or path.name.startswith(".tmp-"):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

    def _prune(self, directory: Path, written: str) -> None:
        """Remove entries of credentials nobody used for a day (rotated secrets, removed connections)."""
        cutoff = time.time() - self.STALE_SECONDS
        for path in directory.iterdir():
            if path.name == f"{written}.token" or not (path.suffix == ".token" or path.name.startswith(".tmp-")):
                continue
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < cutoff:
                    path.unlink()


#: What a Redis call answers when the server cannot be reached.
_UNREACHABLE = object()

# KEYS: the entry. ARGV: the value it must still hold.
_REDIS_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisTokenStore:
    """Entries shared by every host that reaches one Redis server (``redis://``, ``rediss://``, ``unix://``).

    An entry is ``SET <key> <sealed> PX <ms until refresh>``; a process about to mint takes
    ``SET <key>:mint <id> NX PX 30000`` and the others poll for it to go, then read the entry.
    Keys sit under the hash tag ``{audience-token}``. If Redis cannot be reached, tokens are
    kept per process and a warning is logged at most once a minute.
    """

    PREFIX = "{audience-token}"

    def __init__(self, url: str, sealer: Sealer, client: Any = None, lock_seconds: float = MINT_LOCK_SECONDS) -> None:
        self.url = url
        self._sealer = sealer
        self._client = client
        self._lock_seconds = lock_seconds
        self._setup = threading.Lock()
        self._delete_if: Any = None
        self._warn = _Warner(f"Redis at {redacted_url(url)}")

    def __repr__(self) -> str:
        return f"RedisTokenStore({redacted_url(self.url)!r})"

    def _redis(self) -> Any:
        with self._setup:
            if self._client is None:
                self._client = redis_from_url(self.url, CONFIG_OPTION)
            if self._delete_if is None:
                self._delete_if = self._client.register_script(_REDIS_DELETE_IF)
            return self._client

    def _key(self, key: str) -> str:
        return f"{self.PREFIX}:{key}"

    def _call(self, action: Any, default: Any = None) -> Any:
        try:
            return action(self._redis())
        except Exception as exc:
            if not is_redis_error(exc):
                raise
            self._warn(exc)
            return default

    def get(self, key: str) -> CachedToken | None:
        blob = self._call(lambda client: client.get(self._key(key)))
        return self._sealer.open(key, blob) if blob else None

    def put(self, key: str, entry: CachedToken, now: float) -> None:
        milliseconds = math.floor((entry.refresh_at - now) * 1000)
        if milliseconds > 0:
            blob = self._sealer.seal(key, entry)
            self._call(lambda client: client.set(self._key(key), blob, px=milliseconds))

    def drop(self, key: str, token: str) -> None:
        blob = self._call(lambda client: client.get(self._key(key)))
        if not blob:
            return
        entry = self._sealer.open(key, blob)
        if entry is None or entry.token == token:  # a corrupt entry goes too
            self._call(lambda client: self._delete_if(keys=[self._key(key)], args=[blob], client=client))

    @contextlib.contextmanager
    def mint_lock(self, key: str) -> Iterator[None]:
        lock, holder = self._key(key) + ":mint", uuid.uuid4().hex
        milliseconds = int(self._lock_seconds * 1000)

        def take() -> Any:  # True: ours; None: another process holds it; _UNREACHABLE: no Redis
            return self._call(lambda client: client.set(lock, holder, nx=True, px=milliseconds), _UNREACHABLE)

        deadline, pause = time.monotonic() + self._lock_seconds, 0.02
        outcome = take()
        while outcome is None and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
            outcome = take()
        try:
            yield
        finally:
            if outcome is True:
                self._call(lambda client: self._delete_if(keys=[lock], args=[holder], client=client))

    def clear(self) -> None:
        def delete_all(client: Any) -> None:
            for name in client.scan_iter(match=f"{self.PREFIX}:*"):
                client.delete(name)

        self._call(delete_all)


def fernet_key() -> tuple[str | None, str]:
    """``[core] fernet_key`` as the Airflow configuration of this process gives it, or ``None`` and why.

    Read through ``airflow.configuration`` (every Airflow 3 worker and triggerer has it; it also
    honours ``AIRFLOW__CORE__FERNET_KEY``, ``_CMD`` and ``_SECRET``).
    """
    try:
        try:
            from airflow.configuration import conf
        except ImportError:  # pragma: no cover - a task-SDK-only worker
            from airflow.sdk.configuration import conf  # type: ignore[no-redef]
        key = conf.get("core", "fernet_key", fallback=None)
    except Exception as exc:
        return None, f"the Airflow configuration could not be read ({type(exc).__name__})"
    if not key or not str(key).strip():
        return None, "[core] fernet_key is not set"
    return str(key), ""


def default_directory() -> Path:
    """``$AIRFLOW_HOME/audience_tokens`` (``~/airflow`` when ``AIRFLOW_HOME`` is unset, as in Airflow)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return Path(home) / DEFAULT_DIRECTORY


def token_store_from_setting(setting: str | None) -> TokenStore | None:
    """The store for a ``token_cache`` setting, or ``None`` for tokens kept per process.

    ``process`` (or ``memory``): none. ``file``: :func:`default_directory`. ``file:///path`` or a
    path: that directory. ``redis://``, ``rediss://``, ``unix://``: that Redis. Unset: ``file``
    when a Fernet key is configured. Every store needs the Fernet key: without a valid one, tokens
    are kept per process and the reason is logged once (a warning if a store was asked for).
    """
    if setting in ("process", "memory", "none"):
        return None
    key, reason = fernet_key()
    sealer = None
    if key is not None:
        try:
            sealer = Sealer.from_key(key)
        except Exception:  # never echo the value
            reason = "[core] fernet_key is not a valid Fernet key"
    if sealer is None:
        message = "OAuth tokens are kept per process, not shared between task processes: %s"
        if setting:
            log.warning(message + " ([%s] %s asks for a shared cache)", reason, CONFIG_SECTION, CONFIG_OPTION)
        else:
            log.debug(message, reason)
        return None
    if setting and setting.startswith(("redis://", "rediss://", "unix://")):
        return RedisTokenStore(setting, sealer)
    if not setting or setting == "file":
        return FileTokenStore(default_directory(), sealer)
    path = setting[len("file://") :] if setting.startswith("file://") else setting
    if "://" in path or not os.path.isabs(path):
        # core.errors imports Airflow, and this module imports none
        from airflow_audience_provider.core.errors import AudienceConfigurationError

        raise AudienceConfigurationError(
            f"[{CONFIG_SECTION}] {CONFIG_OPTION}: unknown token cache {redacted_url(setting)!r}; "
            "use process, file, file:///absolute/dir or redis://host:port/db"
        )
    return FileTokenStore(Path(path), sealer)


def configured_token_store() -> TokenStore | None:
    """The store ``[audience] token_cache`` (or ``AIRFLOW__AUDIENCE__TOKEN_CACHE``) names for this process."""
    return token_store_from_setting(configured_setting(CONFIG_OPTION))
