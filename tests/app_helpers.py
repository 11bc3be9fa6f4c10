"""Helpers shared by the app tests: example lookup, decompression-bomb files, launched app servers (the real app or
tests/fake_app.py), and raw HTTP calls through Gradio's queue."""

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
import urllib.error
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


def start_app(*args: str, name: str = "app", env: dict | None = None, script: Path | None = None) -> AppProcess:
    """Start ``python app.py --host 127.0.0.1 --port <free> *args`` offline (HF_HUB_OFFLINE=1) without waiting for
    it (several can start at once; :meth:`AppProcess.wait_ready`, then :meth:`AppProcess.stop`). Its output goes to
    ``tests/artifacts/<name>.log``; ``env`` adds environment variables; ``script`` runs another launcher (e.g.
    ``tests/fake_app.py``, which takes ``--port`` only)."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / f"{name}.log"
    log = log_path.open("w")
    command = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), *args]
    if script is not None:
        command = [sys.executable, str(script), "--port", str(port), *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
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


def call_raw(url: str, api_name: str, data: list, timeout: float = 120.0) -> tuple[str, object, int]:
    """One event through Gradio's queue without gradio_client: ``POST /gradio_api/call/<api_name>`` then read the
    event stream. Returns (the final event: "complete" / "error", or "refused" when the join was, its data, the bytes
    of the stream)."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            event_id = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as error:  # refused before the queue (e.g. Gradio's own file check)
        body = error.read()
        return "refused", body.decode(errors="replace"), len(body)
    with urllib.request.urlopen(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=timeout) as stream:
        body = stream.read()
    event, payload = "", None
    for block in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") in ("complete", "error"):
            event, payload = lines["event"], json.loads(lines.get("data", "null"))
    return event, payload, len(body)


def post(url: str, path: str, body: bytes, headers: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """A raw POST; (status, body) whatever the status."""
    request = urllib.request.Request(url + path, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError) as error:  # the server answered and closed while we were sending
        return 0, str(error).encode()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def upload_raw(url: str, data: bytes, name: str = "image.png") -> str:
    """Upload one file with a raw multipart POST (as a browser does); returns its path on the server."""
    boundary = "d2prunerboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, text = post(url, "gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if status != 200:
        raise RuntimeError(f"upload refused ({status}): {text[:200]!r}")
    return json.loads(text)[0]
