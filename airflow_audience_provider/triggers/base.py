"""The one way to wait: a polling trigger with a deadline and a consecutive-failure budget.

A vendor trigger names its hook class and one *status method* of that hook (the same method
the sensor's ``poke`` calls) in :meth:`~AudiencePollingTrigger.polls`, so poke mode, reschedule
mode, deferrable mode and operator waits all judge the vendor's answer by the same code. The trigger:

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
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_audience_provider.core.errors import AudienceError
from airflow_audience_provider.core.offload import to_thread
from airflow_audience_provider.core.results import EventStatus, PollResult, make_event
from airflow_audience_provider.core.waiting import Judgement, error_event, final_event, judge, log_judgement

if TYPE_CHECKING:
    from airflow_audience_provider.core.hook import AudienceHook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HookStatus:
    """What a wait polls: a vendor hook class and its status method, e.g.
    ``HookStatus(LyticsHook, LyticsHook.reevaluation_status)``."""

    hook_class: type[AudienceHook]
    #: the status method as defined on ``hook_class``; it is called on the hook, ``hook.<method>(**status_kwargs)``
    method: Callable[..., PollResult]


class AudiencePollingTrigger(BaseTrigger):
    """Poll the hook's status method (named by :meth:`polls`) until done, failed or the deadline.

    :param conn_id: the Airflow connection id (never the token: kwargs are stored in the DB).
    :param status_kwargs: JSON-simple arguments of the status function.
    :param poll_interval: seconds between polls.
    :param deadline: absolute UNIX time after which a ``timeout`` event is sent; None = no limit.
    :param max_consecutive_failures: transient errors in a row tolerated before an ``error`` event.
    """

    vendor: ClassVar[str]
    #: what is being waited for, for messages ("reevaluation of segment abc"); formatted with the status kwargs.
    subject: ClassVar[str] = "work"
    #: seconds the triggerer may take to render the templated arguments of a task started there.
    render_timeout: ClassVar[float] = 120.0
    #: A trigger whose status arguments are its own keyword arguments and attributes, named like its
    #: sensor's parameters so that the triggerer renders the templated ones (``start_from_trigger``),
    #: declares them here: each name, and how to read a value that may be a rendered string. Empty:
    #: the arguments travel as the ``status_kwargs`` dict.
    status_fields: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    #: the keyword argument and attribute naming the connection.
    conn_field: ClassVar[str] = "conn_id"

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

    @classmethod
    def for_wait(
        cls,
        conn_id: str,
        status_kwargs: dict[str, Any],
        *,
        poll_interval: float,
        deadline: float | None,
        max_consecutive_failures: int = 3,
    ) -> AudiencePollingTrigger:
        """The trigger for one wait, whichever way the subclass carries its status arguments."""
        common: dict[str, Any] = {
            "poll_interval": float(poll_interval),
            "deadline": deadline,
            "max_consecutive_failures": max_consecutive_failures,
        }
        arguments: dict[str, Any] = (
            {cls.conn_field: conn_id, **status_kwargs}
            if cls.status_fields
            else {"conn_id": conn_id, "status_kwargs": status_kwargs}
        )
        return cls(**arguments, **common)

    @classmethod
    def read_status_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The status function's arguments from raw (possibly rendered) values of :attr:`status_fields`."""
        return {name: read(values.get(name)) for name, read in cls.status_fields.items()}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        if self.status_fields:
            arguments = {self.conn_field: getattr(self, self.conn_field)}
            arguments.update({name: getattr(self, name) for name in self.status_fields})
        else:
            arguments = {"conn_id": self.conn_id, "status_kwargs": self.status_kwargs}
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **arguments,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "max_consecutive_failures": self.max_consecutive_failures,
            },
        )

    @staticmethod
    def polls() -> HookStatus:
        """The vendor hook class and the status method this trigger polls: the one its sensor's ``poke`` calls.

        The vendor trigger imports its hook class inside this method, on first use: hook modules
        import requests, which DAG parsing must not load.
        """
        raise NotImplementedError

    @classmethod
    def build_hook(cls, conn_id: str) -> Any:
        """The vendor hook for ``conn_id``: an instance of the class :meth:`polls` names."""
        return cls.polls().hook_class(conn_id)

    @classmethod
    def status_function(cls, hook: Any) -> Callable[..., PollResult]:
        """``hook``'s status method that :meth:`polls` names, bound to ``hook`` (so a subclass's override runs)."""
        status_function: Callable[..., PollResult] = getattr(hook, cls.polls().method.__name__)
        return status_function

    def _make_hook(self) -> Any:
        return self.build_hook(self.conn_id)

    def current_status_kwargs(self) -> dict[str, Any]:
        """The status function's arguments, read from the (possibly just rendered) attributes."""
        if not self.status_fields:
            return dict(self.status_kwargs)
        return self.read_status_fields({name: getattr(self, name) for name in self.status_fields})

    def describe_subject(self) -> str:
        return self.subject.format(**self.current_status_kwargs())

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Keep the context; ``run()`` renders the templated arguments, bounded by :attr:`render_timeout`.

        Airflow 3.3+ calls this in the triggerer, before ``run``, for a task with ``start_from_trigger``.
        The triggerer's supervisor never answers a request type it does not serve, so rendering a
        template that needs one here would wait forever without a word in the task's log.
        """
        self.__dict__["_pending_render"] = (context, jinja_env)

    def resolve_arguments(self) -> None:
        """Called as ``run()`` starts, after any rendering: read the connection and status arguments."""
        self.conn_id = getattr(self, self.conn_field)
        self.status_kwargs = self.current_status_kwargs()

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
        if problem is None:
            try:
                self.resolve_arguments()
            except (TypeError, ValueError) as exc:
                problem = f"Invalid arguments for the {self.vendor} wait: {exc}"
        if problem is not None:
            yield TriggerEvent(make_event(EventStatus.ERROR, self.vendor, problem))
            return
        subject = self.describe_subject()
        try:
            # Off the loop: the first hook of a vendor imports its module (requests, tenacity: ~0.5 s),
            # and the transport may open the rate limiter's backend (a file lock, a Redis client).
            hook = await to_thread(self._make_hook)
            await hook.asettings()  # the connection, resolved asynchronously
            await to_thread(hook.get_conn)
        except AudienceError as exc:
            yield TriggerEvent(error_event(self.vendor, exc))
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
        status_fn = self.status_function(hook)
        failures = 0
        last: PollResult | None = None
        while True:
            try:
                answer: PollResult | Exception = await to_thread(status_fn, **self.status_kwargs)
            except Exception as exc:
                answer = exc
            judgement: Judgement = judge(answer, failures, self.max_consecutive_failures)
            failures, last = judgement.failures, judgement.result or last
            log_judgement(log, judgement, subject, self.max_consecutive_failures)
            if judgement.final:
                yield TriggerEvent(final_event(judgement, self.vendor, subject))
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
