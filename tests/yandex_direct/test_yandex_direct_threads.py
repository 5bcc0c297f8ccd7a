"""One Direct hook used from several threads: each answer's price is reported for the call it answered.

The transport hands the observer the endpoint class of the call (``service.method``), so nothing
about "the current call" is kept on the hook, where another thread would overwrite it.
"""

from __future__ import annotations

import logging
import re
import threading

LINE = re.compile(
    r"Yandex Direct (?P<call>v4 \w+|\S+): (\d+ units spent|no Units header).*\[RequestId=(?P<rid>[^,\]]+)"
)


def test_prices_are_logged_for_the_call_answered_when_threads_share_a_hook(hook, direct, caplog):
    caplog.set_level(logging.INFO, logger="airflow_audience_provider.hooks.yandex_direct")
    hook.get_conn()
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            start.wait(timeout=30)
            for _ in range(3):
                hook.get_retargeting_lists() if index % 2 else hook.get_retargeting_goals()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []

    path_of = {r["request_id"]: r["path"] for r in direct.requests}
    logged = [LINE.search(record.getMessage()) for record in caplog.records]
    logged = [match for match in logged if match]
    assert len(logged) == 24 == hook.calls
    for match in logged:
        path = path_of[match["rid"]]
        if match["call"] == "retargetinglists.get":
            assert path.endswith("/retargetinglists"), (match["call"], path)
        else:
            assert match["call"] == "v4 GetRetargetingGoals" and path.startswith("/live/"), (match["call"], path)
