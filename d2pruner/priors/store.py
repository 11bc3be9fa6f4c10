"""The prior store of one model: finds a saved prior (bundled or cached), else calibrates it and saves it.

Lookups are thread-safe (one lock per store) and return the notes that belong to *that* lookup — e.g. an unusable
prior file that was skipped — so a note never sticks to later results. Notes name files, never a server path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from d2pruner.priors import KINDS, Prior, PriorFileError, load_prior, prior_filename, save_prior
from d2pruner.priors.calibration import Observer, Progress, calibrate_bundled
from d2pruner.resources import BUNDLED_PRIORS_DIR


def user_prior_dir() -> Path:
    """Where priors are cached when the bundled folder is read-only: ``$D2PRUNER_CACHE`` or
    ``$XDG_CACHE_HOME/d2pruner/priors`` (default ``~/.cache/d2pruner/priors``)."""
    if os.environ.get("D2PRUNER_CACHE"):
        return Path(os.environ["D2PRUNER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "d2pruner" / "priors"


def default_prior_dirs() -> list[Path]:
    """The bundled priors first, then the user cache."""
    return [BUNDLED_PRIORS_DIR, user_prior_dir()]


class PriorStore:
    """Priors of one model by (layer, kind).

    Arguments:
        model_id: the model's name (prior files are named after it).
        family: its :class:`~d2pruner.families.Family`.
        observe: ``observe(image, prompt, layer=K)`` for calibration (``Analyzer.observe``).
        dirs: where priors are looked up, in order, and saved (the first writable one).
    """

    def __init__(self, model_id: str, family, observe: Observer, dirs: Sequence[str | os.PathLike[str]] | None = None):
        self.model_id = model_id
        self.family = family
        self.observe = observe
        self.dirs = [Path(d) for d in dirs] if dirs is not None else default_prior_dirs()
        self._priors: dict[tuple[int, str], Prior] = {}
        self._lock = threading.Lock()

    def get(self, layer: int, kind: str = "natural", *, progress: Progress | None = None) -> tuple[Prior, list[str]]:
        """The prior at layer K (``layer``) and its notes: loaded from the first folder that has a usable file, else
        calibrated now (bundled photographs, or blank and noise images for ``"content-free"``) and saved."""
        with self._lock:
            prior, notes = self._known(layer, kind)
            if prior is None:
                prior = calibrate_bundled(self.observe, model_id=self.model_id, family=self.family, layer=layer,
                                          kind=kind, progress=progress)
                notes.append(f"calibrated the {kind} prior of layer {layer} now ({prior.num_images} images)")
                self._save(prior, prior_filename(self.model_id, layer, kind))
            self._priors[(layer, kind)] = prior
            return prior, notes

    def find(self, layer: int, kind: str = "natural") -> tuple[Prior | None, list[str]]:
        """The prior at layer K if one is loaded or saved (never calibrates), and the notes of this lookup."""
        with self._lock:
            return self._known(layer, kind)

    def _known(self, layer: int, kind: str) -> tuple[Prior | None, list[str]]:
        """The prior in memory, else loaded from a file (kept in memory), else None; the notes of this lookup.
        The caller holds the lock."""
        if kind not in KINDS:
            raise ValueError(f"prior kind must be one of {KINDS}; got {kind!r}")
        if (layer, kind) in self._priors:
            return self._priors[(layer, kind)], []
        notes: list[str] = []
        prior = self._load(layer, kind, notes)
        if prior is not None:
            self._priors[(layer, kind)] = prior
        return prior, notes

    def _load(self, layer: int, kind: str, notes: list[str]) -> Prior | None:
        filename = prior_filename(self.model_id, layer, kind)
        for folder in self.dirs:
            path = folder / filename
            if not path.is_file():
                continue
            try:
                return load_prior(path, model_id=self.model_id, layer=layer)
            except PriorFileError as error:
                reason = str(error).replace(str(path), path.name)
                notes.append(f"ignored an unusable prior file ({reason})")
        return None

    def _save(self, prior: Prior, filename: str) -> None:
        for folder in self.dirs:
            try:
                save_prior(prior, folder / filename)
                return
            except OSError:
                continue
