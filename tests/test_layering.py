"""Dependencies run one way: mlflow_server -> tuning -> fracture_models, read from the imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of `package` imports, at any depth of the file."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    "package, forbidden", [("fracture_models", {"tuning", "mlflow_server", "ray", "mlflow", "optuna"}), ("tuning", {"mlflow_server"})]
)
def test_imports_run_one_way(package: str, forbidden: set[str]):
    offenders = {module: names & forbidden for module, names in _imported_packages(package).items() if names & forbidden}
    assert not offenders, offenders


def test_the_leaderboard_and_tracking_import_neither_ray_nor_optuna():
    code = "import sys, tuning.leaderboard, tuning.tracking; print(sorted({'ray', 'optuna'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_only_the_callbacks_of_the_tracking_code_import_ray():
    tracking = {m: n for m, n in _imported_packages("tuning").items() if m.startswith("tuning/tracking/") or m == "tuning/callbacks.py"}
    assert {m for m, names in tracking.items() if "ray" in names} == {"tuning/callbacks.py"}
