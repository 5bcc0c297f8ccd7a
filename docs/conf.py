"""Sphinx configuration for airflow-audience-provider. Build: ``make docs`` (warnings are errors)."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.abspath(".."))
# autodoc imports the modules, which import Airflow: give it a throw-away home and no examples.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="aap-docs-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow_audience_provider import __version__

project = "airflow-audience-provider"
author = "airflow-audience-provider developers"
copyright = "2026, airflow-audience-provider developers"
release = __version__
version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_typehints = "description"
# A dead reference to our own code fails the build. The build has no network, so no intersphinx:
# names from Python, Airflow and requests cannot be linked and are ignored by pattern.
nitpicky = True
nitpick_ignore_regex = [
    ("py:.*", r"(collections|contextlib|datetime|enum|logging|os|pathlib|threading|typing|urllib\.parse)(\..+)?"),
    ("py:.*", r"(requests|starlette|fastapi|airflow)(\..+)?"),
    # FastAPI's Depends(...) inside an Annotated parameter, rendered as its repr's keyword arguments.
    ("py:class", r"(dependency|use_cache|scope)=.*"),
    ("py:.*", r"Context|Path|PathLike|timedelta|Asset|TaskInstanceKey|PokeReturnValue|BaseOperator"),
    ("py:class", r"airflow_audience_provider\..*\._\w+"),  # private base classes, shown by show-inheritance
    ("py:class", r"airflow_audience_provider\.core\.(transport|offload)\.T"),  # TypeVars
]
suppress_warnings: list[str] = []
templates_path: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {"description": "Audiences in step with your warehouse, from Airflow"}
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}


def _link_bare_class_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Link a bare class name from a quoted annotation (``"CriteoHook"``) to the one class of ours so named."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or node.get("reftype") != "class" or "." in target:
        return None
    domain = env.get_domain("py")
    names = [
        n for n, *_ in domain.get_objects() if n.startswith("airflow_audience_provider.") and n.endswith("." + target)
    ]
    if len(names) != 1:
        return None
    return domain.resolve_xref(env, node["refdoc"], app.builder, "class", names[0], node, contnode)


def setup(app: Any) -> None:
    app.connect("missing-reference", _link_bare_class_name)
