"""``make soak``: the sync model of ``test_sync_model.py`` run for many more scenarios.

Usage: ``python tests/sync_model/soak.py [SCENARIOS] [--seed N] [--steps N] [--vendor criteo|yandex_audience]``
(``SOAK_SCENARIOS`` / ``SOAK_SEED`` / ``SOAK_STEPS`` from the environment work too). Prints the
seed first, one progress line per finished scenario, and ``N scenarios, M steps, 0 diverged``
last; exits non-zero on any divergence, after Hypothesis printed the shrunk failing scenario
(the steps to replay) and its reproduction blob.
Rerun a failure with the same seed: ``python tests/sync_model/soak.py N --seed SEED``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="?", type=int, default=int(os.environ.get("SOAK_SCENARIOS", "200")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED") or random.randrange(1 << 32)))
    parser.add_argument("--steps", type=int, default=int(os.environ.get("SOAK_STEPS", "10")))
    parser.add_argument("--vendor", choices=("criteo", "yandex_audience"), default=None)
    args = parser.parse_args()

    import pytest

    stats = Path(tempfile.mkdtemp(prefix="aap-soak-")) / "stats.json"
    os.environ["AUDIENCE_SYNC_MODEL_SCENARIOS"] = str(args.scenarios)
    os.environ["AUDIENCE_SYNC_MODEL_STEPS"] = str(args.steps)
    os.environ["AUDIENCE_SYNC_MODEL_STATS"] = str(stats)
    print(f"sync-model soak: seed {args.seed}, {args.scenarios} scenarios per vendor, up to {args.steps} steps each")
    sys.stdout.flush()
    # pytest captures descriptors 1 and 2; a duplicate of stdout lets each finished scenario print a line.
    os.environ["AUDIENCE_SYNC_MODEL_PROGRESS_FD"] = str(os.dup(sys.stdout.fileno()))
    target = str(HERE / "test_sync_model.py")
    if args.vendor:
        target += f"::test_sync_model[{args.vendor}]"
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", "-x", f"--hypothesis-seed={args.seed}", "--timeout=0", target],
    )
    totals = {"scenarios": 0, "steps": 0, "diverged": 0}
    if stats.exists():
        for per_vendor in json.loads(stats.read_text()).values():
            for key in totals:
                totals[key] += int(per_vendor.get(key, 0))
    if code != 0:
        totals["diverged"] = max(totals["diverged"], 1)
        replay = f"{sys.argv[0]} {args.scenarios} --seed {args.seed}"
        print(f"A scenario diverged (see the falsifying steps above); replay: {replay}")
    print(f"{totals['scenarios']} scenarios, {totals['steps']} steps, {totals['diverged']} diverged")
    return 0 if code == 0 and totals["diverged"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
