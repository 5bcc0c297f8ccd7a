"""The Python snippets of the docs and README call our operators and sensors with arguments they take.

Each ``.. code-block:: python`` of ``docs/`` and each fenced Python block of ``README.md`` is parsed;
every call of a class of ``operators/`` or ``sensors/``, or of a name the snippet imports from this
package, must use only keyword arguments it accepts (for a class, its ``__init__`` chain through
``**kwargs`` up to Airflow's ``BaseOperator``); every imported name must exist.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = [
    f"airflow_audience_provider.{layer}.{vendor}"
    for layer in ("operators", "sensors")
    for vendor in ("criteo", "lytics", "segment", "yandex_audience", "yandex_direct")
    if (REPO / "airflow_audience_provider" / layer / f"{vendor}.py").exists()
]


def _python_blocks() -> list[tuple[str, str]]:
    """``(where, source)`` of every Python snippet in the docs and the README."""
    blocks = []
    for path in sorted((REPO / "docs").rglob("*.rst")):
        if "_build" in path.parts:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"^(\s*)\.\. code-block:: python\s*$", line)
            if not match:
                continue
            indent = len(match.group(1))
            body = []
            for following in lines[number + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            blocks.append((f"{path.relative_to(REPO)}:{number + 1}", textwrap.dedent("\n".join(body))))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for match in re.finditer(r"```python\n(.*?)```", readme, re.S):
        blocks.append((f"README.md:{readme[: match.start()].count(chr(10)) + 1}", match.group(1)))
    return blocks


def _classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == name:
                found[attr] = value
    return found


def _imported(tree: ast.Module) -> dict[str, object]:
    """The names a snippet imports from this package (``from airflow_audience_provider.x import Name``)."""
    found: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("airflow_audience_provider"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                found[alias.asname or alias.name] = getattr(module, alias.name)
    return found


def _accepted(target: object) -> set[str]:
    """Keyword arguments ``target(...)`` accepts: a function's parameters, or for a class each
    ``__init__`` up the MRO while they pass ``**kwargs`` on."""
    if not inspect.isclass(target):
        parameters = inspect.signature(target).parameters  # type: ignore[arg-type]
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return {"*"}
        return {n for n, p in parameters.items() if p.kind is not p.VAR_POSITIONAL}
    cls = target
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters
        accepted.update(n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return accepted


BLOCKS = _python_blocks()


def test_docs_have_python_snippets() -> None:
    assert len(BLOCKS) >= 3, BLOCKS


@pytest.mark.parametrize(("where", "source"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_snippet_keyword_arguments_exist(where: str, source: str) -> None:
    tree = ast.parse(source)
    classes: dict[str, object] = {**_classes(), **_imported(tree)}
    wrong = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if name not in classes:
            if (
                isinstance(name, str)
                and name.endswith(("Operator", "Sensor"))
                and name.startswith(("Criteo", "Lytics", "Segment", "Yandex"))
            ):
                wrong.append(f"{name}: no such operator or sensor")
            continue
        accepted = _accepted(classes[name])
        if "*" not in accepted:
            wrong.extend(f"{name}({kw.arg}=...)" for kw in node.keywords if kw.arg and kw.arg not in accepted)
    assert not wrong, f"{where}: arguments the classes do not take: {wrong}"
