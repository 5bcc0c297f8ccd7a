"""Sphinx configuration for airflow-audience-provider. Build: ``make docs`` (warnings are errors)."""

from __future__ import annotations

import os
import sys
import tempfile

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
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# Airflow's own classes are documented by Airflow; do not fail on their docstrings' cross references.
nitpicky = False
suppress_warnings = ["ref.python"]
templates_path: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {"description": "Audiences in step with your warehouse, from Airflow"}
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
