"""The third-party releases this package is tested with, and a warning when the installed ones are outside.

The bounds below are the single source of truth: ``requirements.txt`` and ``pyproject.toml`` state the same
ones (a test checks it), and CI installs both ends — the oldest supported releases in one virtual environment and
the newest the bounds allow in another. The upper bound is the first minor release CI has *not* tested: the
internals the pruning hooks touch (decoder-layer arguments, attention and mask interfaces, caches) drift between
minors, as 5.24's rename of ``past_key_values`` to ``cache`` showed.
"""

from __future__ import annotations

import warnings
from importlib import metadata

#: package → (oldest supported release, first untested release); supported = oldest <= version < first untested
TESTED_RANGES: dict[str, tuple[str, str]] = {
    "transformers": ("5.23.0", "5.25"),
    "torch": ("2.13.0", "2.15"),
    "gradio": ("6.31.0", "6.32"),
}


class UntestedVersionWarning(UserWarning):
    """An installed dependency is outside the range this release of d2pruner was tested with."""


def _parse(version: str):
    from packaging.version import Version

    return Version(version)


def in_tested_range(package: str, version: str) -> bool:
    """Whether ``version`` of ``package`` lies in :data:`TESTED_RANGES` (local suffixes such as ``+cpu`` ignored)."""
    low, high = TESTED_RANGES[package]
    parsed = _parse(version)
    release = _parse(parsed.base_version)
    return _parse(low) <= release < _parse(high)


def range_text(package: str) -> str:
    low, high = TESTED_RANGES[package]
    return f"{package}>={low},<{high}"


def untested_versions(packages: tuple[str, ...] = ("transformers", "torch")) -> dict[str, str]:
    """Installed versions outside their tested range (packages that are not installed are skipped)."""
    found = {}
    for package in packages:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
        if not in_tested_range(package, version):
            found[package] = version
    return found


_warned = False


def warn_if_untested() -> None:
    """Warn once per process when transformers or torch is outside the tested range (naming the range)."""
    global _warned
    if _warned:
        return
    _warned = True
    for package, version in untested_versions().items():
        warnings.warn(
            f"d2pruner is tested with {range_text(package)}, but {package} {version} is installed: pruning hooks "
            f"touch {package} internals that change between releases, so results may be wrong or calls may fail. "
            f"Install a tested release, e.g. pip install '{range_text(package)}'.",
            UntestedVersionWarning,
            stacklevel=3,
        )


def package_version() -> str:
    """This package's version (``d2pruner.__version__``), read without importing the package root."""
    return VERSION


#: the package's version; ``d2pruner.__version__`` re-exports it
VERSION = "0.2.0"
