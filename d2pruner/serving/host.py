"""The model host of a hosted app: the model is part of each request, not process-wide state.

Every request names its model. :meth:`ModelHost.use` loads it when needed — within a memory budget, keeping as many
models as fit and evicting the least recently used *idle* ones first (a model serving a request, or pinned as the
deployment's default, is never evicted) — and yields what the request runs on. Nothing is unloaded for a model that
cannot be loaded: the allow-list, the Hub's reachability, the local cache and the checkpoint's size against the free
memory are all checked first. A model that is unavailable (offline and not cached, or too large for this machine) is
served by the tiny random model of its family, and the request is told why (:class:`Served` ``.reason``); one that is
not allowed is refused (:class:`ModelRefused`) and nothing changes.

The deployment allow-list (``$D2PRUNER_ALLOWED_MODELS``: comma-separated ids or ``fnmatch`` patterns, ``*`` for any)
defaults to the shipped checkpoints and the tiny models, plus the model the operator starts with. Hugging Face's
offline mode is never switched on for the process: a cached checkpoint is loaded from its local snapshot folder.

Torch and the families are imported when a model is first loaded, not at import.
"""

from __future__ import annotations

import fnmatch
import gc
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from d2pruner.memory import free_bytes, total_bytes

log = logging.getLogger("d2pruner.serving")

Progress = Callable[[str], None]
#: how long an "unavailable" verdict is kept before the checks run again
UNAVAILABLE_SECONDS = 600.0


class ModelRefused(ValueError):
    """A model this deployment does not load (not in its allow-list, or an invalid name); nothing changed."""


class Unavailable(RuntimeError):
    """A model that cannot be loaded here now (offline and not cached, not enough memory, a failed load)."""


# ---------------------------------------------------------------------------------------------------- allow-list


@dataclass(frozen=True)
class AllowList:
    """Which model ids a deployment loads: exact ids (case-insensitive) or ``fnmatch`` patterns; ``*`` allows any."""

    patterns: tuple[str, ...]

    def allows(self, name: str) -> bool:
        low = name.lower()
        return any(fnmatch.fnmatchcase(low, p.lower()) for p in self.patterns)

    @classmethod
    def default(cls, extra: Sequence[str] = ()) -> AllowList:
        """The shipped checkpoints, the tiny models and ``extra`` (e.g. the operator's ``--model``)."""
        from d2pruner.serving.catalog import model_choices

        return cls(tuple(dict.fromkeys([*(c.id for c in model_choices()), *extra])))

    @classmethod
    def from_env(cls, value: str | None = None, extra: Sequence[str] = ()) -> AllowList:
        """``$D2PRUNER_ALLOWED_MODELS`` (or ``value``) if set, else :meth:`default`; ``extra`` is always allowed."""
        value = os.environ.get("D2PRUNER_ALLOWED_MODELS") if value is None else value
        if value is None or not value.strip():
            return cls.default(extra)
        items = [v.strip() for v in value.split(",") if v.strip()]
        return cls(tuple(dict.fromkeys([*items, *extra])))


# ---------------------------------------------------------------------------------------------------- probes


class HubProbe:
    """What the Hub and the local cache say about a checkpoint, quickly (replaceable in tests).

    ``reachable()`` opens a TCP connection to the Hub endpoint (or the configured HTTPS proxy) within
    ``timeout`` seconds (remembered for a minute); ``cached(name)`` looks in the local Hugging Face cache;
    ``parameters(name)`` reads the parameter count from the safetensors metadata on the Hub (None if unknown).
    """

    def __init__(self, timeout: float = 2.0):
        self.timeout = timeout
        self._reachable: tuple[float, bool] | None = None

    def reachable(self) -> bool:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return False
        now = time.monotonic()
        if self._reachable and now - self._reachable[0] < 60:
            return self._reachable[1]
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
        url = urlparse(proxy if proxy else constants.ENDPOINT)
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        ok = False
        if host:
            try:
                with socket.create_connection((host, port), timeout=self.timeout):
                    ok = True
            except OSError:
                ok = False
        self._reachable = (now, ok)
        return ok

    def cached(self, name: str) -> bool:
        from huggingface_hub import try_to_load_from_cache

        try:
            return isinstance(try_to_load_from_cache(name, "config.json"), str)
        except (ValueError, OSError):
            return False

    def parameters(self, name: str) -> float | None:
        """Parameters of a hub checkpoint from its safetensors metadata (a few small requests), or None."""
        try:
            from huggingface_hub import get_safetensors_metadata

            meta = get_safetensors_metadata(name)
            return float(sum(meta.parameter_count.values()))
        except Exception as error:  # no safetensors, gated, network trouble: unknown
            log.info("no parameter count for %s from the Hub (%s)", name, type(error).__name__)
            return None

    def cached_weight_bytes(self, name: str) -> float | None:
        """Bytes of the cached checkpoint's weights (its safetensors index or single file), or None."""
        import json

        from huggingface_hub import try_to_load_from_cache

        try:
            index = try_to_load_from_cache(name, "model.safetensors.index.json")
            if isinstance(index, str):
                with open(index) as f:
                    return float(json.load(f)["metadata"]["total_size"])
            single = try_to_load_from_cache(name, "model.safetensors")
            if isinstance(single, str):
                return float(os.path.getsize(single))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return None

    def local_snapshot(self, name: str) -> str:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)


def default_loader(name: str, *, device: str, local_folder: str | None = None):
    """``d2pruner.load`` — from the cached snapshot folder when offline (keeping the hub id as the name)."""
    from d2pruner.analysis import Analyzer, load

    if local_folder is None:
        return load(name, device=device)
    loaded = load(local_folder, device=device)
    return Analyzer(loaded.model, loaded.processor, name=name, notes=loaded.notes)


# ---------------------------------------------------------------------------------------------------- the host


@dataclass(eq=False)
class LoadedModel:
    """A model in memory."""

    name: str
    analyzer: object
    device: str
    nbytes: float
    seconds: float
    random_weights: bool
    pinned: bool = False
    users: int = 0
    last_used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Served:
    """What one request runs on.

    Attributes:
        requested: the model the request named.
        model: the loaded model that serves it — the requested one, or its family's tiny stand-in.
        reason: why a stand-in serves it (None when it is the requested model).
    """

    requested: str
    model: LoadedModel
    reason: str | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def analyzer(self):
        return self.model.analyzer

    @property
    def random_weights(self) -> bool:
        return self.model.random_weights


class ModelHost:
    """Loads models on demand within a memory budget; see the module docstring.

    Arguments:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
        allowed: the allow-list (default :meth:`AllowList.from_env`).
        budget_bytes: memory for models (default ``$D2PRUNER_MEMORY_GB``, else 90 % of the GPU / 80 % of RAM).
        loader: ``loader(name, device=…, local_folder=…)`` → Analyzer (default :func:`default_loader`).
        probe: a :class:`HubProbe`.
    """

    def __init__(self, *, device: str | None = None, allowed: AllowList | None = None,
                 budget_bytes: float | None = None, loader: Callable | None = None, probe: HubProbe | None = None):
        self.device_note = None
        if device is None or device.startswith("cuda"):
            import torch

            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            elif not torch.cuda.is_available():
                self.device_note = "CUDA was requested but is not available: running on CPU"
                device = "cpu"
        if device not in ("cpu",) and not device.startswith("cuda"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
        self.device = device
        self.allowed = allowed if allowed is not None else AllowList.from_env()
        if budget_bytes is None:
            gb = os.environ.get("D2PRUNER_MEMORY_GB")
            total = total_bytes(device)
            budget_bytes = float(gb) * 1e9 if gb else (total * (0.9 if device.startswith("cuda") else 0.8)
                                                       if total else float("inf"))
        self.budget_bytes = float(budget_bytes)
        self.loader = loader or default_loader
        self.probe = probe or HubProbe()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._unavailable: dict[str, tuple[str, float]] = {}
        self._lock = threading.RLock()  # the model table
        self._load_lock = threading.Lock()  # one load at a time

    # ---- requests
    def check(self, name) -> str:
        """A request's model name, normalised; refused unless allowed.

        Raises:
            ModelRefused: not a non-empty string, or not in the allow-list.
        """
        if not isinstance(name, str) or not name.strip():
            raise ModelRefused(f"model must be a model id (text), got {name!r}")
        name = name.strip()
        if len(name) > 200 or any(ord(c) < 32 for c in name):
            raise ModelRefused("model must be a model id such as 'llava-hf/llava-1.5-7b-hf'")
        if not self.allowed.allows(name):
            raise ModelRefused(f"this deployment does not load {name!r}; it offers the models in the list (set "
                               "D2PRUNER_ALLOWED_MODELS to change that)")
        return name

    @contextmanager
    def use(self, name, progress: Progress | None = None) -> Iterator[Served]:
        """The model a request runs on, loaded if needed and held (never evicted) until the block ends; analyses on
        one model run one at a time (its hooks are per call)."""
        served = self.serve(name, progress)
        try:
            with served.model.lock:
                yield served
        finally:
            with self._lock:
                served.model.users -= 1
                served.model.last_used = time.monotonic()

    def serve(self, name, progress: Progress | None = None) -> Served:
        """Like :meth:`use` without holding the model's lock; it counts as in use until the caller decrements
        ``model.users`` (prefer :meth:`use`)."""
        name = self.check(name)
        reason = self._still_unavailable(name)
        if reason is None:
            try:
                return self._acquire(name, name, None, progress)
            except Unavailable as err:
                reason = str(err)
                with self._lock:
                    self._unavailable[name] = (reason, time.monotonic())
        from d2pruner.serving.catalog import family_of, is_tiny

        if is_tiny(name):  # a tiny model always loads; a failure here is an internal error
            raise RuntimeError(f"the tiny model {name} could not be loaded: {reason}")
        stand_in = family_of(name).tiny_name
        return self._acquire(stand_in, name, reason, progress)

    def prepare(self, name, progress: Progress | None = None, *, pin: bool = False) -> Served:
        """Load a model (or its stand-in) ahead of requests; ``pin`` keeps it loaded (the deployment's default)."""
        served = self.serve(name, progress)
        with self._lock:
            served.model.users -= 1
            served.model.pinned = served.model.pinned or pin
        return served

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def resident_bytes(self) -> float:
        with self._lock:
            return sum(m.nbytes for m in self._models.values())

    # ---- internals
    def _still_unavailable(self, name: str) -> str | None:
        with self._lock:
            found = self._unavailable.get(name)
            if found and time.monotonic() - found[1] < UNAVAILABLE_SECONDS:
                return found[0]
            self._unavailable.pop(name, None)
            return None

    def _acquire(self, name: str, requested: str, reason: str | None, progress: Progress | None) -> Served:
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                model.users += 1
                self._models.move_to_end(name)
                return Served(requested, model, reason)
        with self._load_lock:
            with self._lock:  # loaded by another request meanwhile
                model = self._models.get(name)
                if model is not None:
                    model.users += 1
                    self._models.move_to_end(name)
                    return Served(requested, model, reason)
            model = self._load(name, progress)
            with self._lock:
                model.users += 1
                self._models[name] = model
                self._evict_over_budget(keep=name)
            return Served(requested, model, reason)

    def _estimate(self, name: str) -> tuple[float | None, str | None]:
        """(bytes the weights need on this device, a local snapshot folder to load from) — or Unavailable."""
        from d2pruner.serving.catalog import is_tiny

        per_param = 4 if self.device == "cpu" else 2  # float32 on CPU, the stored 16-bit dtype on a GPU
        if is_tiny(name):  # a few MB: always loads (it is every stand-in)
            return None, None
        if Path(name).is_dir():
            stored = sum(p.stat().st_size for p in Path(name).glob("*.safetensors"))
            return (stored * (2 if self.device == "cpu" else 1) or None), None
        if name.startswith("tiny-"):
            raise ModelRefused(f"unknown tiny model {name!r}")
        from d2pruner.families import checkpoint_of

        shipped = checkpoint_of(name)
        if not self.probe.reachable():
            if not self.probe.cached(name):
                raise Unavailable("no connection to the Hugging Face Hub and the checkpoint is not in the local cache")
            weights = self.probe.cached_weight_bytes(name)
            need = weights * (2 if self.device == "cpu" else 1) if weights else (
                shipped.weight_bytes(per_param) if shipped else None)
            return need, self.probe.local_snapshot(name)
        params = self.probe.parameters(name)
        if params is None and shipped is not None:
            params = shipped.billion_params * 1e9
        return (params * per_param if params else None), None

    def _load(self, name: str, progress: Progress | None) -> LoadedModel:
        from d2pruner.serving.catalog import is_tiny

        need, folder = self._estimate(name)
        if need is not None:
            if need > self.budget_bytes:
                raise Unavailable(f"not enough memory: the weights need about {need / 1e9:.0f} GB on {self.device}, "
                                  f"the memory budget is {self.budget_bytes / 1e9:.0f} GB")
            self._make_room(need)
        if progress:
            progress(f"loading {name} on {self.device} …")
        start = time.perf_counter()
        try:
            analyzer = self.loader(name, device=self.device, local_folder=folder)
        except (ModelRefused, Unavailable):
            raise
        except Exception as error:
            log.exception("loading %s failed", name)
            raise Unavailable(_load_failure(error)) from None
        seconds = time.perf_counter() - start
        nbytes = float(sum(p.numel() * p.element_size() for p in analyzer.model.parameters()))
        log.info("loaded %s on %s in %.1f s (%.2f GB)", name, self.device, seconds, nbytes / 1e9)
        return LoadedModel(name, analyzer, self.device, nbytes, seconds, random_weights=is_tiny(name),
                           last_used=time.monotonic())

    def _make_room(self, need: float) -> None:
        """Evict idle, unpinned models (least recently used first) until ``need`` bytes fit the budget and the free
        memory; if they cannot, evict nothing and raise Unavailable."""
        with self._lock:
            idle = [m for m in self._models.values() if m.users == 0 and not m.pinned]
            resident = sum(m.nbytes for m in self._models.values())
            free = free_bytes(self.device)
            reclaimable = sum(m.nbytes for m in idle)
            fits_budget = resident - reclaimable + need <= self.budget_bytes
            fits_free = free is None or need <= 0.95 * (free + reclaimable)
            if not (fits_budget and fits_free):
                held = ", ".join(m.name for m in self._models.values() if m not in idle) or "nothing"
                free_text = "" if free is None else f", {free / 1e9:.0f} GB are free"
                raise Unavailable(f"not enough memory: the weights need about {need / 1e9:.1f} GB on {self.device}"
                                  f"{free_text} (in use: {held})")
            for m in idle:  # least recently used first (the table is in use order)
                resident_now = sum(x.nbytes for x in self._models.values())
                free_now = free_bytes(self.device)
                if resident_now + need <= self.budget_bytes and (free_now is None or need <= 0.95 * free_now):
                    break
                self._evict(m.name)

    def _evict_over_budget(self, keep: str) -> None:
        for m in [m for m in self._models.values() if m.users == 0 and not m.pinned and m.name != keep]:
            if sum(x.nbytes for x in self._models.values()) <= self.budget_bytes:
                break
            self._evict(m.name)

    def _evict(self, name: str) -> None:
        self._models.pop(name, None)
        log.info("unloaded %s (least recently used)", name)
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _load_failure(err: Exception) -> str:
    """A short reason for a failed load, without the exception's text (which may hold server paths)."""
    text = f"{type(err).__name__}: {err}".lower()
    if "out of memory" in text or isinstance(err, MemoryError):
        return "not enough memory to load it"
    if "connect" in text or "offline" in text or "timed out" in text:
        return "no connection to the Hugging Face Hub and it is not in the local cache"
    if "not found" in text or "404" in text or "does not exist" in text:
        return "no such checkpoint on the Hugging Face Hub"
    if "unsupported model type" in text or "remote code" in text:
        return "not a checkpoint of a supported family (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, InternVL -hf)"
    return f"{type(err).__name__} while loading it (details in the server log)"
