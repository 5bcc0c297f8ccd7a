"""OAuth tokens shared by task processes through the encrypted token cache, counted at the Criteo fake.

Worker subprocesses stand in for Airflow task processes: each command is one "task", which
starts with an empty in-process cache (as a freshly started task process does), builds a
CriteoHook against the sandbox's Criteo fake and calls ``/me``. The fake, not the clients,
counts the tokens it issued.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet

from airflow_audience_provider.core.auth import PROCESS_TOKENS, OAuth2ClientCredentials, TokenCache
from airflow_audience_provider.core.tokencache import (
    CachedToken,
    FileTokenStore,
    RedisTokenStore,
    Sealer,
    UnsafeTokenDirectory,
    token_store_from_setting,
)

FERNET_KEY = Fernet.generate_key().decode()
WORKERS = 3

WORKER = textwrap.dedent(
    """
    import json
    import os
    import sys

    from airflow_audience_provider.core.auth import PROCESS_TOKENS
    from airflow_audience_provider.hooks.criteo import CriteoHook

    print("@@" + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        for name in command.get("unset", []):
            os.environ.pop(name, None)
        os.environ.update(command.get("env", {}))
        PROCESS_TOKENS.reconfigure()  # a new task process: configuration read again...
        PROCESS_TOKENS.clear()  # ...and no token in memory
        try:
            hook = CriteoHook(command.get("conn_id", "criteo_default"))
            hook.probe()
            print("@@" + json.dumps({"minted": hook.get_conn().auth.tokens_minted}), flush=True)
        except Exception as exc:
            print("@@" + json.dumps({"error": type(exc).__name__ + ": " + str(exc)}), flush=True)
    """
)


class Worker:
    """One long-lived Python process that runs a CriteoHook "task" per command."""

    def __init__(self, script: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
        self.process = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # Airflow may print before the marked answers
            if line.startswith("@@"):
                self.answers.put(json.loads(line[2:]))
        self.answers.put({"error": f"worker exited with {self.process.wait()}"})

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float = 180) -> dict[str, Any]:
        return self.answers.get(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> Iterator[list[Worker]]:
    script = tmp_path_factory.mktemp("token-workers") / "worker.py"
    script.write_text(WORKER)
    started = [Worker(script) for _ in range(WORKERS)]
    try:
        for worker in started:
            assert worker.answer() == {"ready": True}
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture
def criteo(criteo_sandbox):
    return criteo_sandbox


def conn_env(criteo, conn_id: str = "criteo_default") -> dict[str, str]:
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(criteo.connection(criteo.base_url))}


def run_tasks(workers: list[Worker], env: dict[str, str], unset: tuple[str, ...] = (), **command: Any) -> list[int]:
    """One task on each worker, all at once; the tokens each one minted itself."""
    for worker in workers:
        worker.send({"env": env, "unset": list(unset), **command})
    answers = [worker.answer() for worker in workers]
    assert all("minted" in answer for answer in answers), answers
    return [answer["minted"] for answer in answers]


def me_statuses(criteo) -> list[int]:
    return [r["status"] for r in criteo.requests if r["path"].endswith("/me")]


def file_env(criteo, directory: Path, key: str = FERNET_KEY) -> dict[str, str]:
    return {
        **conn_env(criteo),
        "AIRFLOW__AUDIENCE__TOKEN_CACHE": f"file://{directory}",
        "AIRFLOW__CORE__FERNET_KEY": key,
    }


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.token"))


def the_entry(directory: Path) -> tuple[str, CachedToken]:
    (path,) = entries(directory)
    key = path.name.removesuffix(".token")
    entry = Sealer.from_key(FERNET_KEY).open(key, path.read_bytes())
    assert entry is not None
    return key, entry


# -- the file store across processes --------------------------------------------------------------


def test_task_processes_of_one_host_mint_one_token_through_the_file_cache(workers, criteo, tmp_path):
    env = file_env(criteo, tmp_path / "tokens")
    minted = run_tasks(workers, env) + run_tasks(workers, env)
    assert criteo.tokens_issued == 1
    assert sum(minted) == 1
    assert me_statuses(criteo) == [200] * (2 * WORKERS)
    # what a deployment beside the sandbox reads: the fake's control API counts tokens too
    state = requests.get(f"{criteo.base_url}/_sandbox/criteo/state", timeout=30).json()
    assert state["tokens_issued"] == 1


def test_an_expired_entry_is_replaced_by_one_new_token_for_every_process(workers, criteo, tmp_path):
    directory = tmp_path / "tokens"
    env = file_env(criteo, directory)
    run_tasks(workers[:1], env)
    key, entry = the_entry(directory)
    # the token's refresh time has come (the fake's token itself is still valid)
    store = FileTokenStore(directory, Sealer.from_key(FERNET_KEY))
    store.put(key, CachedToken(entry.token, entry.expires_at, time.time() - 1), time.time())
    assert sum(run_tasks(workers, env)) == 1
    assert criteo.tokens_issued == 2
    assert the_entry(directory)[1].token != entry.token
    assert me_statuses(criteo) == [200] * (1 + WORKERS)


def test_a_refused_token_is_dropped_for_every_process_and_minted_once_more(workers, criteo, tmp_path):
    directory = tmp_path / "tokens"
    env = file_env(criteo, directory)
    run_tasks(workers[:1], env)
    criteo.revoke_tokens()  # every process that reads the stored token gets a 401
    assert sum(run_tasks(workers, env)) == 1
    assert criteo.tokens_issued == 2
    statuses = me_statuses(criteo)
    assert statuses.count(200) == 1 + WORKERS and 1 <= statuses.count(401) <= WORKERS
    assert run_tasks(workers, env) == [0] * WORKERS  # the replacement serves every later task
    assert criteo.tokens_issued == 2


def test_another_client_secret_gets_another_token(workers, criteo, tmp_path):
    directory = tmp_path / "tokens"
    run_tasks(workers[:1], file_env(criteo, directory))
    criteo.rotate_secret("rotated-secret-0123456789")  # the first token stops working too
    env = {**file_env(criteo, directory), **conn_env(criteo, "criteo_rotated")}
    assert run_tasks(workers[:1], env, conn_id="criteo_rotated") == [1]
    assert criteo.tokens_issued == 2
    assert 401 not in me_statuses(criteo)  # the first token was not offered for the new secret
    assert len(entries(directory)) == 2


def test_a_corrupt_or_foreign_entry_is_ignored_and_replaced(workers, criteo, tmp_path):
    directory = tmp_path / "tokens"
    env = file_env(criteo, directory)
    run_tasks(workers[:1], env)
    key, entry = the_entry(directory)
    (directory / f"{key}.token").write_bytes(b"\x00not a sealed entry")
    assert sum(run_tasks(workers, env)) == 1
    _, replaced = the_entry(directory)
    # sealed with another Fernet key (a rotated-away key): unreadable, so ignored as well
    other = Sealer.from_key(Fernet.generate_key().decode())
    (directory / f"{key}.token").write_bytes(other.seal(key, replaced))
    assert sum(run_tasks(workers, env)) == 1
    assert criteo.tokens_issued == 3
    assert 401 not in me_statuses(criteo)
    assert the_entry(directory)[1].token not in (entry.token, replaced.token)


def test_the_directory_is_private_and_holds_no_secret_token_or_client_id_in_clear(workers, criteo, tmp_path):
    directory = tmp_path / "tokens"
    run_tasks(workers, file_env(criteo, directory))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert {path.suffix for path in files} == {".token", ".lock"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert all(c in "0123456789abcdef" for c in path.stem)
    connection = criteo.connection(criteo.base_url)
    with criteo.lock:
        tokens = list(criteo._tokens)
    clear = [connection["password"], connection["login"], *tokens]
    blob = b"".join(path.read_bytes() for path in files)
    assert tokens and not [value for value in clear if value.encode() in blob]


def test_without_a_fernet_key_each_process_mints_its_own_token(workers, criteo, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**conn_env(criteo), "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__FERNET_KEY": ""}
    assert run_tasks(workers, env, unset=("AIRFLOW__AUDIENCE__TOKEN_CACHE",)) == [1] * WORKERS
    env["AIRFLOW__AUDIENCE__TOKEN_CACHE"] = "file"  # asked for, still not without a key
    assert run_tasks(workers, env) == [1] * WORKERS
    assert criteo.tokens_issued == 2 * WORKERS
    assert not (home / "audience_tokens").exists()


def test_by_default_with_a_fernet_key_tokens_are_shared_under_airflow_home(workers, criteo, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**conn_env(criteo), "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY}
    assert sum(run_tasks(workers, env, unset=("AIRFLOW__AUDIENCE__TOKEN_CACHE",))) == 1
    assert criteo.tokens_issued == 1
    assert len(entries(home / "audience_tokens")) == 1


# -- the Redis store across processes -------------------------------------------------------------


if importlib.util.find_spec("redis") is not None:
    from test_ratelimit_redis import redis_url  # a private redis-server for this module
else:

    @pytest.fixture(scope="module")
    def redis_url() -> str:
        pytest.skip("the redis package (the 'redis' extra) is not installed")


@pytest.fixture
def redis_env(redis_url, criteo) -> Iterator[dict[str, str]]:
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/3"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield {**conn_env(criteo), "AIRFLOW__AUDIENCE__TOKEN_CACHE": url, "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY}
    client.close()


def test_processes_on_several_hosts_mint_one_token_through_redis(workers, criteo, redis_env, tmp_path):
    import redis

    # separate homes stand in for separate hosts: nothing is shared but Redis
    homes = [tmp_path / f"host-{n}" for n in range(len(workers))]
    for worker, home in zip(workers, homes, strict=True):
        home.mkdir()
        worker.send({"env": {**redis_env, "AIRFLOW_HOME": str(home)}})
    assert sum(worker.answer()["minted"] for worker in workers) == 1
    assert criteo.tokens_issued == 1
    client = redis.Redis.from_url(redis_env["AIRFLOW__AUDIENCE__TOKEN_CACHE"])
    (key,) = client.keys("*")
    value = client.get(key)
    connection = criteo.connection(criteo.base_url)
    with criteo.lock:
        (token,) = list(criteo._tokens)
    assert key.startswith(b"{audience-token}:")
    assert connection["login"].encode() not in key and connection["password"].encode() not in key
    assert token.encode() not in value and connection["password"].encode() not in value
    assert 0 < client.pttl(key) <= (900 - 60) * 1000  # kept until the refresh margin of the 900 s token
    # a 401 drops it for every host and one new token follows
    criteo.revoke_tokens()
    assert sum(run_tasks(workers, redis_env)) == 1
    assert criteo.tokens_issued == 2
    client.close()


def test_an_unreachable_redis_keeps_tokens_per_process(criteo, recorded):
    store = RedisTokenStore("redis://:not-in-logs@127.0.0.1:9/0", Sealer.from_key(FERNET_KEY), lock_seconds=1)
    cache = TokenCache(store)
    hooks_auth = [_auth(criteo, cache) for _ in range(2)]
    assert hooks_auth[0].token() == hooks_auth[1].token()
    assert criteo.tokens_issued == 1
    assert [level for level, _ in recorded.lines] == ["WARNING"]  # at most one a minute
    assert "failed (ConnectionError)" in recorded.lines[0][1] and "not-in-logs" not in recorded.lines[0][1]


# -- in this process ------------------------------------------------------------------------------


def _auth(criteo, cache: TokenCache, secret: str | None = None) -> OAuth2ClientCredentials:
    """Client credentials against the fake's token endpoint (a plain POST over HTTP)."""

    def post(url: str, form: dict[str, str]) -> dict[str, Any]:
        return dict(requests.post(url, data=form, timeout=30).json())

    connection = criteo.connection(criteo.base_url)
    return OAuth2ClientCredentials(
        criteo.base_url + "/oauth2/token", connection["login"], secret or connection["password"], post, cache=cache
    )


def test_threads_of_two_processes_share_one_token_through_one_directory(criteo, tmp_path):
    """Two caches stand for two processes; their threads race for the first token."""
    store = FileTokenStore(tmp_path / "tokens", Sealer.from_key(FERNET_KEY))
    caches = [TokenCache(store), TokenCache(FileTokenStore(tmp_path / "tokens", Sealer.from_key(FERNET_KEY)))]
    auths = [_auth(criteo, caches[n % 2]) for n in range(8)]
    start = threading.Barrier(len(auths))
    tokens: list[str] = []

    def work(auth: OAuth2ClientCredentials) -> None:
        start.wait(timeout=30)
        tokens.append(auth.token())

    threads = [threading.Thread(target=work, args=(auth,)) for auth in auths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert criteo.tokens_issued == 1


def test_a_directory_that_is_not_private_is_not_used(criteo, tmp_path, recorded):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o755)
    (tmp_path / "tokens").symlink_to(real)
    store = FileTokenStore(tmp_path / "tokens", Sealer.from_key(FERNET_KEY))
    with pytest.raises(UnsafeTokenDirectory):
        store._dir()
    cache = TokenCache(store)
    assert _auth(criteo, cache).token() == _auth(criteo, cache).token()  # memory still works
    assert list(real.iterdir()) == []
    assert "failed (UnsafeTokenDirectory)" in recorded.lines[0][1]


def test_a_directory_others_could_read_is_closed(tmp_path):
    (tmp_path / "tokens").mkdir(mode=0o755)
    os.chmod(tmp_path / "tokens", 0o755)
    FileTokenStore(tmp_path / "tokens", Sealer.from_key(FERNET_KEY))._dir()
    assert stat.S_IMODE((tmp_path / "tokens").stat().st_mode) == 0o700


def test_settings_choose_the_store(monkeypatch, tmp_path, recorded):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", FERNET_KEY)
    assert token_store_from_setting("process") is None
    default = token_store_from_setting(None)
    assert isinstance(default, FileTokenStore) and default.directory == tmp_path / "audience_tokens"
    assert token_store_from_setting("file").directory == tmp_path / "audience_tokens"  # type: ignore[union-attr]
    assert token_store_from_setting(f"file://{tmp_path}/t").directory == tmp_path / "t"  # type: ignore[union-attr]
    redis_store = token_store_from_setting("redis://:pw-not-shown@127.0.0.1:6379/2")
    assert isinstance(redis_store, RedisTokenStore) and "pw-not-shown" not in repr(redis_store)
    from airflow_audience_provider.core.errors import AudienceConfigurationError

    with pytest.raises(AudienceConfigurationError, match="token_cache"):
        token_store_from_setting("s3://bucket/tokens")
    # no usable key: nothing shared, and the reason is logged (never the key)
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "")
    assert token_store_from_setting(None) is None
    reason = "OAuth tokens are kept per process, not shared between task processes: [core] fernet_key is not set"
    assert recorded.lines == [("DEBUG", reason)]
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "not-a-fernet-key-123")
    assert token_store_from_setting("file") is None
    assert recorded.lines[1][0] == "WARNING" and "not a valid Fernet key" in recorded.lines[1][1]
    assert "not-a-fernet-key-123" not in repr(recorded.lines)


@pytest.fixture
def recorded(monkeypatch) -> Iterator[Recorded]:
    """What the token cache logs (Airflow's own log setup may not propagate to pytest's capture)."""
    handler = Recorded()
    logger = logging.getLogger("airflow_audience_provider.core.tokencache")
    monkeypatch.setattr(logger, "level", logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


def test_the_process_cache_reads_the_setting_once(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", FERNET_KEY)
    monkeypatch.setenv("AIRFLOW__AUDIENCE__TOKEN_CACHE", f"file://{tmp_path}")
    PROCESS_TOKENS.reconfigure()
    try:
        store = PROCESS_TOKENS.store()
        assert isinstance(store, FileTokenStore) and PROCESS_TOKENS.store() is store
    finally:
        monkeypatch.setenv("AIRFLOW__AUDIENCE__TOKEN_CACHE", "process")
        PROCESS_TOKENS.reconfigure()
    assert PROCESS_TOKENS.store() is None
