"""`import grouprl` (the core API) must stay light: torch and numpy only."""

import subprocess
import sys

HEAVY = ("transformers", "tokenizers", "ray", "verl", "trl", "matplotlib", "typer", "rich", "pydantic", "yaml")


def test_import_grouprl_does_not_import_heavy_packages():
    code = (
        "import sys, grouprl\n"
        "from grouprl import Rollouts, compute_advantages\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import grouprl pulled in: {out.stdout.strip()}"
