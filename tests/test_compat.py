"""The supported version ranges: one set of bounds everywhere, tested at both ends, and a clear warning outside."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

import d2pruner.compat as compat

ROOT = Path(__file__).resolve().parents[1]


def _requirements(path: Path) -> dict[str, Requirement]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[req.name.lower().replace("_", "-")] = req
    return out


def _pyproject() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *project["optional-dependencies"]["app"]]
    return {Requirement(r).name.lower().replace("_", "-"): Requirement(r) for r in names}


def _lower(req: Requirement) -> Version:
    return next(Version(s.version) for s in req.specifier if s.operator == ">=")


def test_requirements_and_pyproject_state_the_same_bounds():
    reqs, project = _requirements(ROOT / "requirements.txt"), _pyproject()
    assert set(reqs) == set(project)
    for name, req in reqs.items():
        assert req.specifier == project[name].specifier, name


def test_the_tested_ranges_are_the_stated_bounds():
    reqs = _requirements(ROOT / "requirements.txt")
    for package, (low, high) in compat.TESTED_RANGES.items():
        spec = reqs[package].specifier
        assert {(s.operator, s.version) for s in spec} == {(">=", low.removesuffix(".0")), ("<", high)}, package


def test_the_oldest_stack_pins_every_lower_bound():
    """CI's oldest environment installs exactly the lower bounds, so they are tested, not hoped for."""
    reqs = _requirements(ROOT / "requirements.txt")
    oldest = _requirements(ROOT / ".ci" / "oldest.txt")
    assert set(reqs) <= set(oldest)
    for name, req in reqs.items():
        (pin,) = oldest[name].specifier
        assert pin.operator == "==" and Version(pin.version) == _lower(req), name


@pytest.mark.parametrize(
    ("package", "version", "expected"),
    [
        ("transformers", "5.23.0", True),
        ("transformers", "5.24.3", True),
        ("transformers", "5.22.2", False),
        ("transformers", "5.25.0", False),
        ("transformers", "5.25.0.dev0", False),
        ("torch", "2.13.0+cpu", True),
        ("torch", "2.14.1", True),
        ("torch", "2.15.0", False),
    ],
)
def test_in_tested_range(package, version, expected):
    assert compat.in_tested_range(package, version) is expected


def test_an_untested_transformers_warns_once_naming_the_range(monkeypatch):
    versions = {"transformers": "5.30.0", "torch": "2.14.1"}
    monkeypatch.setattr(compat.metadata, "version", lambda name: versions[name])
    monkeypatch.setattr(compat, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.warn_if_untested()
        compat.warn_if_untested()
    assert len(caught) == 1
    assert issubclass(caught[0].category, compat.UntestedVersionWarning)
    assert "transformers>=5.23.0,<5.25" in str(caught[0].message) and "5.30.0" in str(caught[0].message)


def test_the_installed_stack_is_a_tested_one():
    """CI runs both environments inside the ranges; a run outside them would not prove anything."""
    assert compat.untested_versions(("transformers", "torch", "gradio")) == {}
