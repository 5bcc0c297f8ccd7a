"""Every public class and function of the package is rendered in the Sphinx docs.

A module's public names are its top-level classes and functions without a leading underscore
(only those in ``__all__`` when it has one). Each needs a docstring (without one the reference
shows a bare signature) and an ``automodule`` directive of its module under ``docs/`` that renders
it: one with members (the default, undocumented members included), or one whose ``:members:`` list
names it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "airflow_audience_provider"


def _rendered() -> dict[str, set[str] | None]:
    """Module -> the names its directives list (None: every documented member)."""
    rendered: dict[str, set[str] | None] = {}
    for page in (REPO / "docs").rglob("*.rst"):
        if "_build" in page.parts:
            continue
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"^\.\. automodule:: (\S+)\s*$", line)
            if not match:
                continue
            options = []
            for following in lines[number + 1 :]:
                if not following.startswith((" ", "\t")) or not following.strip():
                    break
                options.append(following.strip())
            members: set[str] | None = None
            if ":no-members:" in options:
                members = set()
            for option in options:
                if option.startswith(":members:") and option[len(":members:") :].strip():
                    members = {name.strip() for name in option[len(":members:") :].split(",")}
            module = match.group(1)
            known = rendered.get(module, set())
            rendered[module] = None if members is None or known is None else known | members
    return rendered


def _public(path: Path) -> tuple[list[str], list[str]]:
    """``(public names, the ones without a docstring)`` of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exported: set[str] | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            exported = set(ast.literal_eval(node.value))
    names, undocumented = [], []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            if (exported is not None and node.name not in exported) or _is_overload(node):
                continue
            names.append(node.name)
            if ast.get_docstring(node) is None and not _assigns_doc(node):
                undocumented.append(node.name)
    return names, undocumented


def _is_overload(node: ast.AST) -> bool:
    decorators = getattr(node, "decorator_list", [])
    return any(isinstance(d, ast.Name) and d.id == "overload" for d in decorators)


def _assigns_doc(node: ast.AST) -> bool:
    """A class body that sets ``__doc__ = ...`` (a docstring built from parts)."""
    return isinstance(node, ast.ClassDef) and any(
        isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__doc__" for t in item.targets)
        for item in node.body
    )


def test_every_public_class_and_function_is_rendered() -> None:
    rendered = _rendered()
    missing, undocumented = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        names, without_docstring = _public(path)
        undocumented += [f"{module}.{name}" for name in without_docstring]
        if not names:
            continue
        if module not in rendered:
            missing.append(f"{module} (no automodule)")
            continue
        listed = rendered[module]
        if listed is not None:
            missing += [f"{module}.{name}" for name in names if name not in listed]
    assert not missing, f"not rendered in docs/: {missing}"
    assert not undocumented, f"public but without a docstring: {undocumented}"
