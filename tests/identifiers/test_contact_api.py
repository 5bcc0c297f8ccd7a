"""The public surface: lazy exports, and an import that stays cheap for DAG parsing."""

from __future__ import annotations

import subprocess
import sys

import airflow_audience_provider.identifiers as api


def test_every_export_resolves() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert set(dir(api)) == set(api.__all__)


def test_import_does_not_pull_heavy_modules() -> None:
    code = (
        "import sys\n"
        "import airflow_audience_provider.identifiers as m\n"
        "m.sync_contact_list, m.get_rule('criteo', 'email'), m.Chunk, m.SnapshotStore, m.CsvSource\n"
        "heavy = sorted(k for k in sys.modules if k.split('.')[0] in ('airflow', 'pyarrow', 'phonenumbers'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
