"""The one way to wait: a polling trigger with a deadline and a consecutive-failure budget.

A vendor trigger names its hook and one *status function* of that hook (the same function
the sensor's ``poke`` calls), so poke mode, reschedule mode, deferrable mode and operator
waits all judge the vendor's answer by the same code. The trigger:

* builds its hook (the first one imports the vendor module) and runs each status call in a
  worker thread and resolves the connection asynchronously, so the triggerer's event loop
  never blocks;
* yields exactly one event of the shape made by :func:`~airflow_audience_provider.core.results.make_event`;
* stops at its own absolute deadline (``airflow dags test`` runs triggers inline with no
  timeout, so the trigger must bound itself);
* tolerates ``max_consecutive_failures`` transient errors (5xx, timeouts, 429 past the retry
  budget) before giving up, and fails at once on authentication, permission and not-found errors;
* for a task that starts in the triggerer (``start_from_trigger``), renders the templated
  arguments itself, bounded in time and reading XComs only in the way the triggerer serves, and
  fails with a clear ``error`` event when that is not possible.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceConfigurationError,
    AudienceError,
    AudienceNotFoundError,
    AudiencePermissionError,
    AudienceValidationError,
)
from airflow_audience_provider.core.results import EventStatus, Phase, PollResult, make_event

log = logging.getLogger(__name__)

#: Errors no amount of waiting will fix.
FATAL_ERRORS = (
    AudienceAuthenticationError,
    AudiencePermissionError,
    AudienceNotFoundError,
    AudienceConfigurationError,
    AudienceValidationError,
)


class AudiencePollingTrigger(BaseTrigger):
    """Poll ``<hook>.<status_method>(**status_kwargs)`` until done, failed or the deadline.

    :param conn_id: the Airflow connection id (never the token: kwargs are stored in the DB).
    :param status_kwargs: JSON-simple arguments of the status function.
    :param poll_interval: seconds between polls.
    :param deadline: absolute UNIX time after which a ``timeout`` event is sent; None = no limit.
    :param max_consecutive_failures: transient errors in a row tolerated before an ``error`` event.
    """

    #: dotted path of the hook class and the name of its status method; set by subclasses.
    hook_path: ClassVar[str]
    status_method: ClassVar[str]
    vendor: ClassVar[str]
    #: what is being waited for, for messages ("reevaluation of segment abc").
    subject: ClassVar[str] = "work"
    #: seconds the triggerer may take to render the templated arguments of a task started there.
    render_timeout: ClassVar[float] = 120.0

    def __init__(
        self,
        conn_id: str,
        status_kwargs: dict[str, Any],
        poll_interval: float = 60.0,
        deadline: float | None = None,
        max_consecutive_failures: int = 3,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.status_kwargs = dict(status_kwargs)
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline) if deadline is not None else None
        self.max_consecutive_failures = int(max_consecutive_failures)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "status_kwargs": self.status_kwargs,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "max_consecutive_failures": self.max_consecutive_failures,
            },
        )

    def _make_hook(self) -> Any:
        module_name, class_name = self.hook_path.rsplit(".", 1)
        return getattr(importlib.import_module(module_name), class_name)(self.conn_id)

    def describe_subject(self) -> str:
        return self.subject.format(**self.status_kwargs)

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Keep the context; ``run()`` renders the templated arguments, bounded by :attr:`render_timeout`.

        Airflow 3.3+ calls this in the triggerer, before ``run``, for a task with ``start_from_trigger``.
        The triggerer's supervisor never answers a request type it does not serve, so rendering a
        template that needs one here would wait forever without a word in the task's log.
        """
        self.__dict__["_pending_render"] = (context, jinja_env)

    def resolve_arguments(self) -> None:
        """Called as ``run()`` starts, after any rendering: derive what depends on templated attributes."""

    async def _render_in_triggerer(self) -> str | None:
        """Render what :meth:`render_template_fields` kept; a message saying why not on failure."""
        pending = self.__dict__.pop("_pending_render", None)
        if pending is None:
            return None
        context, jinja_env = pending
        fields = ", ".join(self.template_fields) or "none"

        async def render() -> None:
            if os.environ.get("AIRFLOW_DISABLE_GREENBACK_PORTAL", "").lower() != "true":
                import greenback  # a dependency of Airflow's triggerer

                # Sync SDK calls made by templates (xcom_pull, var, conn) then suspend this task, not the loop.
                await greenback.ensure_portal()
            BaseTrigger.render_template_fields(self, _triggerer_context(context), jinja_env)  # type: ignore[arg-type]

        try:
            await asyncio.wait_for(render(), timeout=self.render_timeout)
        except TimeoutError:
            return (
                f"The triggerer did not answer while rendering the templated arguments ({fields}) within "
                f"{self.render_timeout:g} s: a template asks for something the triggerer does not serve. "
                "Use only ti.xcom_pull(...) of unmapped tasks, var, conn, params and the run's dates "
                "in these fields, or start the task on a worker (start_from_trigger=False)."
            )
        except Exception as exc:
            return f"Could not render the templated arguments ({fields}) in the triggerer: {type(exc).__name__}: {exc}"
        return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        problem = await self._render_in_triggerer()
        if problem is not None:
            yield TriggerEvent(make_event(EventStatus.ERROR, self.vendor, problem))
            return
        self.resolve_arguments()
        subject = self.describe_subject()
        failures = 0
        last: PollResult | None = None
        try:
            # Off the loop: the first hook of a vendor imports its module (requests, tenacity: ~0.5 s).
            hook = await asyncio.to_thread(self._make_hook)
            await hook.aget_conn()  # resolves the connection asynchronously, once
        except AudienceError as exc:
            yield TriggerEvent(_error_event(self.vendor, exc))
            return
        except Exception as exc:  # e.g. the connection is not defined where the triggerer runs
            yield TriggerEvent(
                make_event(
                    EventStatus.ERROR,
                    self.vendor,
                    f"Could not set up the {self.vendor} connection '{self.conn_id}' in the triggerer: "
                    f"{type(exc).__name__}: {exc}",
                )
            )
            return
        status_fn = getattr(hook, self.status_method)
        while True:
            try:
                polled: PollResult = await asyncio.to_thread(status_fn, **self.status_kwargs)
                last = polled
                failures = 0
            except FATAL_ERRORS as exc:
                yield TriggerEvent(_error_event(self.vendor, exc))
                return
            except Exception as exc:
                failures += 1
                log.warning(
                    "Checking %s failed (%s: %s); %d of %d consecutive failures tolerated",
                    subject,
                    type(exc).__name__,
                    exc,
                    failures,
                    self.max_consecutive_failures,
                )
                if failures >= self.max_consecutive_failures:
                    yield TriggerEvent(
                        make_event(
                            EventStatus.ERROR,
                            self.vendor,
                            f"Gave up checking {subject} after {failures} consecutive failures: {exc}",
                        )
                    )
                    return
            else:
                log.info("%s: %s", subject, polled.describe())
                if polled.phase is Phase.DONE:
                    yield TriggerEvent(
                        make_event(
                            EventStatus.SUCCESS,
                            self.vendor,
                            polled.message,
                            vendor_status=polled.vendor_status,
                            result=polled.data or {},
                        )
                    )
                    return
                if polled.phase is Phase.FAILED:
                    yield TriggerEvent(
                        make_event(
                            EventStatus.FAILED,
                            self.vendor,
                            polled.message,
                            vendor_status=polled.vendor_status,
                            result=polled.data or {},
                        )
                    )
                    return
            now = time.time()
            if self.deadline is not None and now >= self.deadline:
                seen = f"last seen: {last.describe()}" if last else "no successful check"
                yield TriggerEvent(
                    make_event(EventStatus.TIMEOUT, self.vendor, f"Timed out waiting for {subject}; {seen}")
                )
                return
            pause = self.poll_interval if self.deadline is None else min(self.poll_interval, self.deadline - now)
            await asyncio.sleep(max(pause, 0.0))


class _TriggererTaskInstance:
    """The task instance templates see in the triggerer: ``xcom_pull`` reads one value per task.

    By default ``xcom_pull(task_ids=...)`` reads every map index (``GetXComSequenceSlice``), which the
    triggerer of Airflow 3.3 does not serve; it serves single reads (``GetXCom``), and map index -1
    is an unmapped task's value. Everything else is the task instance's own.
    """

    def __init__(self, ti: Any) -> None:
        self._ti = ti

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ti, name)

    def xcom_pull(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("map_indexes", -1)
        return self._ti.xcom_pull(*args, **kwargs)


def _triggerer_context(context: Any) -> dict[str, Any]:
    """A copy of ``context`` whose task instance reads XComs the way the triggerer serves them."""
    rendered = dict(context)
    for key in ("ti", "task_instance"):
        if rendered.get(key) is not None:
            rendered[key] = _TriggererTaskInstance(rendered[key])
    return rendered


def _error_event(vendor: str, exc: AudienceError) -> dict[str, Any]:
    """An ``error`` event for a typed error, in the keys :func:`validate_event` reads back.

    (``exc.to_dict()`` cannot be splatted into :func:`make_event`: its ``status``, ``vendor``
    and ``message`` keys collide with make_event's own arguments.)
    """
    return make_event(
        EventStatus.ERROR,
        vendor,
        str(exc),
        error=type(exc).__name__,
        http_status=exc.status,
        code=exc.code,
        request_id=exc.request_id,
    )
