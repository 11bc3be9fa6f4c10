"""Bounded state of a hosted app: an LRU cache of analyses (by count and estimated bytes), the served photos (in
memory, under random tokens — no file, no path), and a janitor that deletes old files from folders on a schedule so
disk use stays bounded. Gradio-free and torch-free."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("d2pruner.serving")


def nbytes_of(value, _depth: int = 0) -> int:
    """A rough size of a result object: its numpy arrays (and those of its attributes, two levels deep)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if _depth > 2:
        return 0
    if isinstance(value, dict):
        return sum(nbytes_of(v, _depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v, _depth + 1) for v in value[:4096])
    if hasattr(value, "__dict__"):
        return sum(nbytes_of(v, _depth + 1) for v in vars(value).values())
    return 0


class LRUCache:
    """A thread-safe LRU mapping bounded by entry count and by total estimated bytes (``size_of``)."""

    def __init__(self, max_entries: int, max_bytes: float = float("inf"), size_of: Callable = nbytes_of):
        self.max_entries = int(max_entries)
        self.max_bytes = float(max_bytes)
        self.size_of = size_of
        self._items: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value) -> None:
        size = int(self.size_of(value))
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            while len(self._items) > 1 and (len(self._items) > self.max_entries or self.total_bytes() > self.max_bytes):
                self._items.popitem(last=False)

    def total_bytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class PhotoStore:
    """Display copies of analysed photos (JPEG bytes) under random tokens, for a route that serves each once to the
    browser instead of embedding it in every panel. Bounded (LRU)."""

    def __init__(self, max_photos: int = 64):
        self._photos = LRUCache(max_photos, size_of=len)

    def add(self, jpeg: bytes) -> str:
        token = secrets.token_hex(12)
        self._photos.put(token, jpeg)
        return token

    def get(self, token: str) -> bytes | None:
        if not isinstance(token, str) or len(token) != 24 or any(c not in "0123456789abcdef" for c in token):
            return None
        return self._photos.get(token)

    def __len__(self) -> int:
        return len(self._photos)


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the files under ``folder`` (0 if missing)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def delete_older_than(folder: str | os.PathLike, age_seconds: float, now: float | None = None) -> int:
    """Delete files under ``folder`` modified more than ``age_seconds`` ago (and folders left empty); returns the
    number of files deleted. Symlinks are removed, never followed."""
    now = time.time() if now is None else now
    deleted = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            try:
                if now - os.lstat(path).st_mtime > age_seconds:
                    os.unlink(path)
                    deleted += 1
            except OSError:
                continue
        for name in dirs:
            path = os.path.join(root, name)
            try:
                if now - os.lstat(path).st_mtime > age_seconds:  # a new folder is about to be filled
                    os.rmdir(path)  # only succeeds when empty
            except OSError:
                continue
    return deleted


class Janitor:
    """Deletes files older than ``age_seconds`` from ``folders`` every ``every_seconds`` (a daemon thread)."""

    def __init__(self, folders: Sequence[str | os.PathLike], age_seconds: float, every_seconds: float):
        self.folders = [Path(f) for f in folders]
        self.age_seconds = float(age_seconds)
        self.every_seconds = float(every_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> int:
        return sum(delete_older_than(f, self.age_seconds) for f in self.folders)

    def start(self) -> Janitor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="d2pruner-janitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_seconds):
            try:
                deleted = self.sweep()
                if deleted:
                    log.info("janitor: deleted %d old files", deleted)
            except Exception:  # never let housekeeping take the server down
                log.exception("janitor failed")
