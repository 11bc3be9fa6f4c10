"""Helpers shared by the app tests: example lookup, decompression-bomb files, and a launched app server."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

from d2pruner.resources import EXAMPLES_DIR

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = EXAMPLES_DIR
ARTIFACTS = ROOT / "tests" / "artifacts"


def example(stem: str) -> dict:
    """The examples.json entry of ``stem`` (e.g. ``"coffee"``)."""
    items = json.loads((EXAMPLES / "examples.json").read_text())
    return next(e for e in items if Path(e["file"]).stem == stem)


def bomb_png(path: Path, size: int = 20000) -> Path:
    """A size×size grey PNG (400 MP for 20000) written row by row: ~0.4 MB on disk, never held in memory."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * size
    body = b"".join(comp.compress(row) for _ in range(size)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def bomb_jpeg(path: Path, size: int = 20000) -> Path:
    """A size×size grey JPEG (encoding it needs size² bytes of memory for a moment)."""
    from PIL import Image

    Image.new("L", (size, size), 128).save(path, format="JPEG", quality=30)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class AppProcess:
    """A started ``python app.py`` server: its process, URL and log file."""

    proc: subprocess.Popen
    url: str
    log_path: Path
    log: object

    def wait_ready(self, timeout: float = 120.0) -> str:
        """Block until the app answers (its URL), or raise with the end of its log."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                pass
            if time.monotonic() > deadline:
                log = self.log_path.read_text()[-3000:]
                raise TimeoutError(f"app.py did not answer within {timeout:.0f} s:\n{log}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.log.close()


def start_app(*args: str, name: str = "app", env: dict | None = None) -> AppProcess:
    """Start ``python app.py --host 127.0.0.1 --port <free> *args`` offline (HF_HUB_OFFLINE=1) without waiting for
    it (several can start at once; :meth:`AppProcess.wait_ready`, then :meth:`AppProcess.stop`). Its output goes to
    ``tests/artifacts/<name>.log``; ``env`` adds environment variables."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / f"{name}.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), *args],
                            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    return AppProcess(proc, f"http://127.0.0.1:{port}/", log_path, log)


@contextlib.contextmanager
def running_app(*args: str, name: str = "app", timeout: float = 120.0) -> Iterator[str]:
    """``python app.py --host 127.0.0.1 --port <free> *args`` offline (HF_HUB_OFFLINE=1, so the default model
    falls back to tiny-llava at once); yields its URL once it answers, and stops it afterwards. Its output goes to
    ``tests/artifacts/<name>.log``."""
    app = start_app(*args, name=name)
    try:
        yield app.wait_ready(timeout)
    finally:
        app.stop()
