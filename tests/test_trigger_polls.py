"""Each trigger names its hook class and status method once (``polls()``); the base derives the rest."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import airflow_audience_provider.triggers
from airflow_audience_provider.triggers.base import AudiencePollingTrigger


def _vendor_triggers() -> list[type[AudiencePollingTrigger]]:
    package = airflow_audience_provider.triggers
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
    found, todo = [], list(AudiencePollingTrigger.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith(package.__name__ + "."):
            found.append(cls)
    return sorted(found, key=lambda c: c.__qualname__)


TRIGGERS = _vendor_triggers()


def test_every_vendor_trigger_is_found():
    assert len(TRIGGERS) >= 7


@pytest.mark.parametrize("cls", TRIGGERS, ids=lambda c: c.__name__)
def test_the_hook_and_status_method_come_from_polls(cls):
    polled = cls.polls()
    assert getattr(polled.hook_class, polled.method.__name__) is polled.method
    hook = cls.build_hook("some_conn")
    assert type(hook) is polled.hook_class and hook.conn_id == "some_conn"
    assert hook.vendor == cls.vendor

    class Override(polled.hook_class):
        pass

    def status(self, **kwargs):
        return ("overridden", kwargs)

    setattr(Override, polled.method.__name__, status)
    bound = cls.status_function(Override("some_conn"))
    assert bound(x=1) == ("overridden", {"x": 1})  # the hook's own method runs, as ``hook.<method>`` would
