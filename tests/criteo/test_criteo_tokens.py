"""One OAuth token per process and Criteo app, not per hook: counted at the Criteo fake's token endpoint.

Task threads, several hooks of one task, and the triggerer's triggers (coroutines whose requests
run on worker threads) share the token until shortly before it expires; a 401 replaces it once.
"""

from __future__ import annotations

import asyncio
import threading

from airflow_audience_provider.core.auth import PROCESS_TOKENS
from airflow_audience_provider.hooks.criteo import CriteoHook


def me_statuses(criteo) -> list[int]:
    return [r["status"] for r in criteo.requests if r["path"].endswith("/me")]


def test_hooks_of_one_process_share_one_token(make_hook, criteo):
    hooks = [make_hook() for _ in range(5)]
    for hook in hooks:
        hook.probe()
    assert criteo.tokens_issued == 1
    assert sum(hook.get_conn().auth.tokens_minted for hook in hooks) == 1
    assert me_statuses(criteo) == [200] * 5


def test_threads_wait_for_one_token_request_instead_of_each_sending_one(make_hook, criteo):
    hooks = [make_hook() for _ in range(8)]
    start = threading.Barrier(len(hooks))
    errors: list[BaseException] = []

    def work(hook: CriteoHook) -> None:
        try:
            start.wait(timeout=30)
            hook.probe()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(hook,)) for hook in hooks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert criteo.tokens_issued == 1
    assert me_statuses(criteo) == [200] * 8


def test_triggers_in_one_triggerer_share_the_token(criteo):
    """What each polling trigger does: resolve the connection asynchronously, call on a worker thread."""

    async def one_trigger() -> str:
        hook = CriteoHook()
        await hook.aget_conn()
        return await asyncio.to_thread(hook.probe)

    async def triggerer() -> list[str]:
        return await asyncio.gather(*(one_trigger() for _ in range(6)))

    assert len(asyncio.run(triggerer())) == 6
    assert criteo.tokens_issued == 1
    assert me_statuses(criteo) == [200] * 6


def test_a_token_near_expiry_is_replaced_once_for_every_hook(make_hook, criteo):
    first, second = make_hook(), make_hook()
    first.probe()
    later = [criteo.now() + 900 - 30]  # inside the 60 s refresh margin of the 900 s token
    second.get_conn().auth._clock = lambda: later[0]
    second.probe()  # mints the replacement
    assert criteo.tokens_issued == 2
    first.get_conn().auth._clock = lambda: later[0]
    first.probe()  # ...which the first hook uses instead of minting a third
    assert criteo.tokens_issued == 2


def test_a_revoked_token_is_replaced_once_for_every_hook(make_hook, criteo):
    first, second = make_hook(), make_hook()
    first.probe()
    second.probe()
    criteo.revoke_tokens()
    first.probe()  # 401, one new token, resent
    second.probe()  # already has the new token: no 401
    assert me_statuses(criteo) == [200, 200, 401, 200, 200]
    assert criteo.tokens_issued == 2


def test_another_secret_gets_its_own_token_and_no_secret_is_kept_in_keys(make_hook, set_criteo_conn, criteo):
    make_hook().probe()
    conn = criteo.connection(criteo.base_url)
    criteo.rotate_secret("rotated-secret-0123456789")  # the old secret now gets invalid_client
    make_hook(set_criteo_conn("criteo_rotated", password="rotated-secret-0123456789")).probe()
    assert criteo.tokens_issued == 2
    assert len(PROCESS_TOKENS) == 2
    keys = repr(list(PROCESS_TOKENS._slots))
    assert conn["password"] not in keys and "rotated-secret-0123456789" not in keys
