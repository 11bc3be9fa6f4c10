"""The README's Python examples run as written (the gradio_client one is run by test_app_client.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], flags=re.S)


@pytest.mark.parametrize("section", ["Selecting tokens", "Pruning inside a model"])
def test_readme_examples_run(section, monkeypatch, tmp_path, capsys):
    import d2pruner.priors.store

    monkeypatch.chdir(README.parent)
    monkeypatch.setattr(d2pruner.priors.store, "user_prior_dir", lambda: tmp_path)
    blocks = python_blocks(section)
    assert blocks, f"no python example under '## {section}'"
    for block in blocks:
        exec(compile(block, f"README:{section}", "exec"), {})
    assert capsys.readouterr().out.strip()
