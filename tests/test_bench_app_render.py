"""bench/app_render.py: a one-run smoke writes its table for both layouts. Values only (sizes, columns); never
times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "app_render.py"


def test_a_smoke_run_writes_the_table(tmp_path):
    out = tmp_path / "app-render.md"
    result = subprocess.run([sys.executable, str(SCRIPT), "--runs", "1", "--out", str(out)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())
    assert list(rows) == ["LLaVA-1.5 layout (576 tokens)", "LLaVA-NeXT layout (2,880 tokens)"]
    for values in rows.values():
        assert set(values) >= {"cached analyze, ms", "colour toggle, ms", "step slider, ms", "analyze response, KB"}
        assert 20 < values["analyze response, KB"] < 300  # the photo is not inside the response
    assert "| LLaVA-NeXT layout (2,880 tokens) |" in out.read_text()
