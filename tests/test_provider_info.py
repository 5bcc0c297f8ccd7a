"""Provider registration: get_provider_info() against the installed dist, the hooks and the Airflow CLI."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_audience_provider import __version__, get_provider_info

INFO = get_provider_info()
DIST = importlib.metadata.distribution("airflow-audience-provider")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def import_path(dotted: str):
    """Import a module, or a class given as module.Class."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, attr = dotted.rpartition(".")
        return getattr(importlib.import_module(module), attr)


def test_package_name_is_the_canonical_dist_name():
    assert INFO["package-name"] == canonical(DIST.metadata["Name"])
    assert INFO["versions"] == [__version__] == [DIST.version]


def test_entry_point_points_at_get_provider_info():
    (entry,) = [e for e in DIST.entry_points if e.group == "apache_airflow_provider"]
    assert entry.load() is get_provider_info


def test_info_validates_against_airflow_schema():
    from airflow.providers_manager import _create_provider_info_schema_validator

    _create_provider_info_schema_validator().validate(INFO)


def all_dotted_paths() -> list[str]:
    paths = []
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for block in INFO[kind]:
            paths += block["python-modules"]
    paths += [c["hook-class-name"] for c in INFO["connection-types"]]
    paths += INFO["extra-links"]
    for asset in INFO["asset-uris"]:
        paths += [asset["handler"], asset["factory"]]
    return paths


@pytest.mark.parametrize("dotted", all_dotted_paths())
def test_every_path_imports(dotted):
    assert import_path(dotted) is not None


def test_integrations_named_by_module_blocks_exist():
    names = {i["integration-name"] for i in INFO["integrations"]}
    for kind in ("hooks", "operators", "sensors", "triggers"):
        assert {b["integration-name"] for b in INFO[kind]} <= names


@pytest.mark.parametrize("conn", INFO["connection-types"], ids=lambda c: c["connection-type"])
def test_connection_type_matches_its_hook(conn):
    hook = import_path(conn["hook-class-name"])
    assert hook.conn_type == conn["connection-type"]
    assert hook.hook_name == conn["hook-name"]
    assert hook.default_conn_name
    assert hook.conn_name_attr
    first = next(iter(p for p in inspect.signature(hook.__init__).parameters if p != "self"))
    assert first == hook.conn_name_attr
    assert inspect.signature(hook.__init__).parameters[first].default == hook.default_conn_name
    assert hook.get_ui_field_behaviour() == conn["ui-field-behaviour"]


@pytest.mark.parametrize("conn", INFO["connection-types"], ids=lambda c: c["connection-type"])
def test_conn_fields_mark_secrets_as_passwords(conn):
    from airflow_audience_provider.connections import CONNECTION_SPECS

    spec = CONNECTION_SPECS[conn["connection-type"]]
    assert set(conn["conn-fields"]) == {f.name for f in spec.fields}
    for field in spec.fields:
        schema = conn["conn-fields"][field.name]["schema"]
        assert (schema.get("format") == "password") is field.secret, field.name
        assert conn["conn-fields"][field.name]["label"]
    # the token lives in the password field, which Airflow masks; it is relabelled, not hidden
    assert "password" not in conn["ui-field-behaviour"]["hidden-fields"]
    assert "password" in conn["ui-field-behaviour"]["relabeling"]


def test_asset_uri_handler_and_factory():
    from urllib.parse import urlsplit

    from airflow_audience_provider.assets import create_asset, sanitize_uri

    uri = urlsplit("lytics://acme/segment/3f9a")
    assert sanitize_uri(uri) == uri
    for bad in ("lytics:///segment/3f9a", "lytics://acme/audience/3f9a", "lytics://acme/segment"):
        with pytest.raises(ValueError):
            sanitize_uri(urlsplit(bad))
    asset = create_asset(vendor="lytics", account="acme", kind="segment", object_id="3f9a")
    assert asset.uri == "lytics://acme/segment/3f9a"
    assert asset.extra == {}


def test_airflow_hook_lineage_creates_assets_through_the_factory():
    """Airflow calls the registered factory as factory(**asset_kwargs, extra=asset_extra)."""
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector
    except ImportError:  # Airflow 3.1
        from airflow.lineage.hook import get_hook_lineage_collector

    kwargs = {"vendor": "lytics", "account": "acme", "kind": "segment", "object_id": "3f9a"}
    collector = get_hook_lineage_collector()
    asset = collector.create_asset(scheme="lytics", asset_kwargs=kwargs, asset_extra={"size": 3})
    assert asset.uri == "lytics://acme/segment/3f9a"
    assert asset.extra == {"size": 3}
    assert collector.create_asset(scheme="lytics", asset_kwargs=kwargs).extra == {}


FORBIDDEN = (
    "requests",
    "tenacity",
    "airflow_audience_provider.hooks.lytics",
    "airflow_audience_provider.core.transport",
    "phonenumbers",
    "pyarrow",
    "polars",
    "fastapi",
    "uvicorn",
    "starlette",
)

_PROBE = """
import json, sys
baseline = set(sys.modules)
import airflow_audience_provider
after_package = set(sys.modules)
from airflow.sdk import BaseOperator, BaseOperatorLink, BaseSensorOperator  # what any operator needs
from airflow.providers.common.compat.sdk import conf
import airflow.triggers.base
after_airflow = set(sys.modules)
import airflow_audience_provider.operators.lytics
import airflow_audience_provider.sensors.lytics
import airflow_audience_provider.triggers.lytics
import airflow_audience_provider.links.lytics
import airflow_audience_provider.operators.yandex_audience
import airflow_audience_provider.operators.criteo
after_modules = set(sys.modules)
print(json.dumps({
    "package": sorted(after_package - baseline),
    "airflow": sorted(after_airflow),
    "modules": sorted(after_modules - after_airflow),
}))
"""


def test_imports_stay_cheap():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120, env=os.environ.copy()
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    # the bare package imports nothing but itself and the standard library: not even airflow
    third_party = [
        m
        for m in loaded["package"]
        if m.split(".")[0] not in sys.stdlib_module_names and not m.startswith("airflow_audience_provider")
    ]
    assert third_party == []
    # operator/sensor/trigger modules add none of the heavy or vendor modules on top of airflow.sdk
    # (airflow.sdk itself imports tenacity; that is Airflow's cost, not ours)
    added = set(loaded["modules"])
    assert "requests" not in loaded["airflow"]  # so the check below means something for requests
    for name in FORBIDDEN:
        assert name not in added, name


@pytest.fixture(scope="module")
def airflow_cli_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    return env


def airflow_cli(env, *args: str) -> str:
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run([str(airflow), *args], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_airflow_providers_list_shows_the_provider(airflow_cli_env):
    out = airflow_cli(airflow_cli_env, "providers", "list", "-o", "plain")
    (line,) = [ln for ln in out.splitlines() if ln.split() and ln.split()[0] == INFO["package-name"]]
    assert DIST.version in line


def test_airflow_providers_hooks_shows_the_lytics_hook(airflow_cli_env):
    out = airflow_cli(airflow_cli_env, "providers", "hooks", "-o", "plain")
    (line,) = [ln for ln in out.splitlines() if ln.split() and ln.split()[0] == "lytics"]
    assert "airflow_audience_provider.hooks.lytics.LyticsHook" in line
    assert INFO["package-name"] in line
