"""The layers hold (README "Layout"): `make test` fails on an import that goes up a layer,
not only `make lint`. The contracts live in pyproject.toml [tool.importlinter]."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout


def test_keel_loads_neither_temporal_nor_settings_until_asked() -> None:
    # `import keel` serves the workflow sandbox and light clients: names load on first use
    probe = (
        "import keel, sys; "
        "print(sorted(m for m in ('temporalio', 'keel.settings', 'keel.client') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
