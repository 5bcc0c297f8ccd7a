"""Every ``:param name:`` of a docstring in the package names a parameter the code takes.

The API reference renders these docstrings, so a parameter renamed or removed in code and left in a
docstring is a claim the code does not keep. A class's docstring may document its ``__init__``
chain's parameters and its annotated attributes; a function's or method's, its own parameters.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from typing import Any

import airflow_audience_provider

_PARAM = re.compile(r":param (?:[\w\[\], |.]+ )?(\w+):")


def _accepted(obj: Any) -> set[str]:
    if not inspect.isclass(obj):
        return set(inspect.signature(obj).parameters)
    names: set[str] = set()
    for klass in obj.__mro__:
        if klass is object:
            continue
        names |= set(getattr(klass, "__annotations__", {}))
        if "__init__" in vars(klass):
            names |= set(inspect.signature(vars(klass)["__init__"]).parameters)
    return names


def _documented() -> list[tuple[str, Any, str]]:
    """``(qualified name, object, docstring)`` of every class, method and function of the package."""
    found = []
    prefix = airflow_audience_provider.__name__ + "."
    for info in pkgutil.walk_packages(airflow_audience_provider.__path__, prefix):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if getattr(value, "__module__", None) != module.__name__:
                continue
            where = f"{module.__name__}.{name}"
            if inspect.isfunction(value):
                found.append((where, value, value.__doc__ or ""))
            elif inspect.isclass(value):
                found.append((where, value, value.__doc__ or ""))
                for attr, member in vars(value).items():
                    function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                    if inspect.isfunction(function) and function.__doc__:
                        target = value if attr == "__init__" else function
                        found.append((f"{where}.{attr}", target, function.__doc__))
    return found


def test_docstring_params_exist() -> None:
    documented = _documented()
    assert len(documented) > 500, len(documented)
    wrong = [
        f"{where}: :param {param}:"
        for where, obj, doc in documented
        for param in _PARAM.findall(doc)
        if param not in _accepted(obj)
    ]
    assert not wrong, wrong
