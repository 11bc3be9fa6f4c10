"""d2pruner.serving without Gradio: only uploaded or bundled files are read (absolute, relative, ``..``, symlinks,
/proc), pixels bounded before a decode, the model host (allow-list, memory budget, LRU, never unloading a working
model, stand-ins, offline snapshots, two models at once), the conversions that let the package's messages through,
the bounded stores, the janitor and the upload-limit middleware."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from app_helpers import EXAMPLES, bomb_png
from fake_analyzer import FakeAnalyzer
from PIL import Image, ImageFile

from d2pruner.serving import host as host_module
from d2pruner.serving import requests, uploads
from d2pruner.serving.asgi import RequestLimits
from d2pruner.serving.host import AllowList, ModelHost, ModelRefused
from d2pruner.serving.limits import Limits
from d2pruner.serving.store import Janitor, LRUCache, PhotoStore, delete_older_than, folder_bytes

# ---- uploads: which paths are read


@pytest.fixture
def roots(tmp_path):
    upload = tmp_path / "gradio"
    upload.mkdir()
    private = tmp_path / "private"
    private.mkdir()
    Image.new("RGB", (64, 48), "red").save(upload / "ok.png")
    Image.new("RGB", (64, 48), "blue").save(private / "secret.png")
    (private / "notes.txt").write_text("secret")
    return upload, private


def test_uploaded_and_bundled_files_are_read(roots):
    upload, _ = roots
    allowed = [upload, uploads.Path(EXAMPLES)]
    assert uploads.load_upload(str(upload / "ok.png"), allowed).image.size == (64, 48)
    assert uploads.load_upload({"path": str(upload / "ok.png")}, allowed).image.size == (64, 48)  # no "meta"
    assert uploads.load_upload(type("FileData", (), {"path": str(upload / "ok.png")})(), allowed).digest
    coffee = uploads.load_upload({"path": str(EXAMPLES / "coffee.jpg"), "meta": {"_type": "gradio.FileData"}},
                                 allowed)
    assert coffee.image.size == (600, 400)
    (upload / "inner").symlink_to(upload / "ok.png")  # a link that stays inside is fine
    assert uploads.load_upload(str(upload / "inner"), allowed).image.size == (64, 48)


def test_every_other_path_gets_one_message_that_reveals_nothing(roots, monkeypatch, tmp_path):
    upload, private = roots
    allowed = [upload, EXAMPLES]
    (upload / "escape.png").symlink_to(private / "secret.png")
    (upload / "escape_dir").symlink_to(private, target_is_directory=True)
    (upload / "folder").mkdir()
    monkeypatch.chdir(tmp_path)
    payloads = [
        str(private / "secret.png"),  # absolute
        {"path": str(private / "notes.txt")},
        {"path": str(private / "missing.png")},  # does not exist
        "private/secret.png",  # relative
        f"{upload}/../private/secret.png",  # ..
        str(upload / "escape.png"),  # a symlink out
        str(upload / "escape_dir" / "secret.png"),  # through a linked folder
        "/proc/self/environ", "/proc/self/cmdline", "/etc/passwd", "/dev/zero",
        str(upload / "folder"),  # a folder inside
        str(upload / "nope.png"),  # missing inside
        "a\x00b",  # a NUL byte
        f"{EXAMPLES}/../../pyproject.toml",
    ]
    for payload in payloads:
        with pytest.raises(uploads.UploadError) as info:
            uploads.load_upload(payload, allowed)
        assert str(info.value) == uploads.NOT_AN_UPLOAD, payload
    for payload, message in [(None, "No image"), ({"path": None}, "No image"), ("  ", "No image"),
                             (5, "got int"), ({"path": ["x"]}, "got list")]:
        with pytest.raises(uploads.UploadError, match=message):
            uploads.load_upload(payload, allowed)


def _lying_jpeg(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose header claims width × height pixels (the issue's 690-byte 65000×65000 file)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "grey").save(buf, format="JPEG", quality=50)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_pixels_are_bounded_before_a_decode(tmp_path, monkeypatch):
    limits = Limits(image_pixels=4_000_000)
    liar, bomb = _lying_jpeg(tmp_path / "liar.jpg", 65000, 65000), bomb_png(tmp_path / "bomb.png", 5000)

    def decoded(self, *args, **kwargs):
        raise AssertionError("an oversized image was decoded before it was refused")

    with monkeypatch.context() as patched:  # refused from the header alone: no pixel is decoded
        patched.setattr(ImageFile.ImageFile, "load", decoded)
        with pytest.raises(uploads.UploadError, match="too large to decode safely"):
            uploads.open_image(liar, limits)
        with pytest.raises(uploads.UploadError, match="the limit is 4 MP"):
            uploads.open_image(bomb, limits)
    big = tmp_path / "big.jpg"
    Image.new("L", (4000, 3000), 128).save(big, quality=30)  # 12 MP JPEG: decoded at 1/2
    loaded = uploads.open_image(big, limits)
    assert loaded.image.size == (2000, 1500) and loaded.scale == 0.5 and loaded.original_size == (4000, 3000)
    assert any("1/2 resolution" in n for n in loaded.notes)


def test_decoding_edge_cases(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not an image")
    data = io.BytesIO()
    Image.new("RGB", (200, 150), "green").save(data, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    (tmp_path / "big.bin").write_bytes(b"\x89PNG" + b"\0" * 2048)
    for name, message in [("empty.png", r"empty \(0 bytes\)"), ("text.png", "not an image this app can read"),
                          ("cut.jpg", "damaged or truncated"), ("big.bin", "the limit is 0 MB")]:
        limits = Limits(upload_bytes=1024) if name == "big.bin" else Limits()
        with pytest.raises(uploads.UploadError, match=message):
            uploads.open_image(tmp_path / name, limits)
    frames = [Image.new("RGB", (30, 20), c) for c in ("red", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    gif = uploads.open_image(tmp_path / "anim.gif")
    assert gif.image.getpixel((5, 5))[0] > 200 and any("first frame" in n for n in gif.notes)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (120, 80), "white").save(tmp_path / "rot.jpg", exif=exif.tobytes())
    rotated = uploads.open_image(tmp_path / "rot.jpg")
    assert rotated.image.size == (80, 120) and rotated.original_size == (80, 120)
    Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 100).save(tmp_path / "deep.png")
    assert uploads.open_image(tmp_path / "deep.png").image.mode == "RGB"
    for size in ((3, 3), (8, 600), (1000, 12)):  # tiny and extreme: decoded as they are
        Image.new("RGB", size, "red").save(tmp_path / "odd.png")
        assert uploads.open_image(tmp_path / "odd.png").image.size == size


# ---- the model host


class Probe:
    def __init__(self, *, reachable=True, cached=(), params=None, weight_bytes=None):
        self._reachable, self._cached, self._params, self._weights = reachable, set(cached), params or {}, weight_bytes
        self.calls = []

    def reachable(self):
        self.calls.append("reachable")
        return self._reachable

    def cached(self, name):
        return name in self._cached

    def parameters(self, name):
        self.calls.append(("parameters", name))
        return self._params.get(name)

    def cached_weight_bytes(self, name):
        return self._weights

    def local_snapshot(self, name):
        return f"/cache/snapshots/{name.replace('/', '--')}"


class Loader:
    """Records what was loaded; analyzers of 10 MB each (budgets below count in them)."""

    def __init__(self, fail=(), delay=0.0):
        self.loaded, self.fail, self.delay = [], set(fail), delay
        self.folders = {}

    def __call__(self, name, *, device, local_folder=None):
        if self.delay:
            time.sleep(self.delay)
        if name in self.fail:
            raise OSError(f"{name} does not appear to have a file named config.json at /secret/path")
        self.loaded.append(name)
        self.folders[name] = local_folder
        analyzer = FakeAnalyzer(name)
        analyzer.model.parameters = lambda: [type("P", (), {"numel": lambda s: 5_000_000,
                                                            "element_size": lambda s: 2})()]
        return analyzer


MB10 = 10e6


def host_of(loader=None, probe=None, budget=25e6, allowed=("*",)) -> ModelHost:
    return ModelHost(device="cpu", allowed=AllowList(allowed), budget_bytes=budget, loader=loader or Loader(),
                     probe=probe or Probe(params={"a/1": 2.5e6, "a/2": 2.5e6, "a/3": 2.5e6}))


def test_the_allow_list_refuses_and_nothing_changes():
    loader = Loader()
    host = host_of(loader, allowed=("a/*", "tiny-llava"))
    with host.use("a/1"):
        pass
    for name, message in [("nobody/nothing", "does not load 'nobody/nothing'"), (None, "model must be a model id"),
                          ("", "model must be a model id"), ("a/1\nx", "model must be a model id"),
                          ("x" * 300, "model must be a model id")]:
        with pytest.raises(ModelRefused, match=message):
            host.serve(name)
    assert host.loaded() == ["a/1"] and loader.loaded == ["a/1"]
    default = AllowList.default(extra=["/models/mine"])
    assert default.allows("llava-hf/llava-1.5-7b-hf") and default.allows("TINY-QWEN2.5-VL")
    assert default.allows("/models/mine") and not default.allows("someone/else")
    assert AllowList.from_env("org/*, exact/id").allows("org/anything")
    assert AllowList.from_env("*").allows("anything/at-all")


def test_a_failing_load_never_unloads_the_working_model():
    loader = Loader(fail={"a/2"})
    host = host_of(loader, budget=1e12)
    host.prepare("a/1")
    served = host.serve("a/2")  # fails: its family's tiny model stands in, with the reason
    served.model.users -= 1
    assert served.name == "tiny-llava" and served.requested == "a/2" and "while loading" in served.reason
    assert "/secret" not in served.reason
    assert set(host.loaded()) == {"a/1", "tiny-llava"}
    with host.use("a/1") as again:
        assert again.name == "a/1" and again.reason is None


def test_models_are_kept_within_the_budget_least_recently_used_first_out():
    loader = Loader()
    host = host_of(loader, budget=25e6)  # two 10 MB models fit
    for name in ("a/1", "a/2"):
        with host.use(name):
            pass
    with host.use("a/1"):
        pass  # a/2 is now the least recently used
    with host.use("a/3"):
        pass
    assert host.loaded() == ["a/1", "a/3"]
    assert host.resident_bytes() <= host.budget_bytes


def test_a_model_in_use_or_pinned_is_never_evicted():
    host = host_of(budget=25e6)
    host.prepare("a/1", pin=True)
    release, started = threading.Event(), threading.Event()

    def hold():
        with host.use("a/2"):
            started.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    started.wait(10)
    served = host.serve("a/3")  # no room: a/1 is pinned, a/2 is in use → a stand-in, nothing evicted
    served.model.users -= 1
    assert served.name == "tiny-llava" and "not enough memory" in served.reason and "a/2" in served.reason
    assert {"a/1", "a/2"} <= set(host.loaded())
    release.set()
    worker.join()


def test_a_checkpoint_larger_than_memory_is_not_downloaded():
    """An online CPU machine: 7 B parameters × 4 bytes (float32) do not fit, the loader never sees the name."""
    loader = Loader()
    probe = Probe(params={"llava-hf/llava-1.5-7b-hf": 7.06e9})
    host = host_of(loader, probe, budget=16e9, allowed=("llava-hf/*", "tiny-*"))
    served = host.prepare("llava-hf/llava-1.5-7b-hf")
    assert served.name == "tiny-llava" and "about 28 GB on cpu" in served.reason
    assert loader.loaded == ["tiny-llava"] and ("parameters", "llava-hf/llava-1.5-7b-hf") in probe.calls
    unknown = host_of(Loader(), Probe(params={}), budget=16e9, allowed=("*",))  # no metadata: the shipped table
    assert "about 28 GB" in unknown.prepare("llava-hf/llava-1.5-7b-hf").reason
    host.prepare("llava-hf/llava-1.5-7b-hf")  # the verdict is remembered: no second probe
    assert probe.calls.count(("parameters", "llava-hf/llava-1.5-7b-hf")) == 1


def test_free_memory_is_checked_before_loading(monkeypatch):
    monkeypatch.setattr(host_module, "free_bytes", lambda device: 3e6)
    host = host_of(budget=1e12)
    served = host.prepare("a/1")
    assert served.name == "tiny-llava" and "0 GB are free" in served.reason


def test_offline_a_cached_checkpoint_loads_from_its_snapshot_and_keeps_its_id():
    loader = Loader()
    host = host_of(loader, Probe(reachable=False, cached={"org/cached"}), budget=1e12)
    assert host.prepare("org/cached").name == "org/cached"
    assert loader.folders["org/cached"] == "/cache/snapshots/org--cached"
    missing = host.prepare("org/missing")
    assert missing.name == "tiny-llava" and "not in the local cache" in missing.reason
    assert host.prepare("OpenGVLab/InternVL3-2B-hf").name == "tiny-internvl"  # the family's stand-in


def test_two_models_at_once_each_request_gets_its_own():
    loader = Loader(delay=0.2)
    host = host_of(loader, budget=1e12)
    seen = {}

    def run(name):
        with host.use(name) as served:
            seen[name] = served.analyzer.name

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a/1", "a/2", "a/1", "a/2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a/1": "a/1", "a/2": "a/2"} and sorted(loader.loaded) == ["a/1", "a/2"]  # each loaded once


# ---- raw values → the package's arguments


def test_conversions_pass_anything_unusual_through():
    assert requests.as_int(2.0) == 2 and requests.as_int(2.5) == 2.5 and requests.as_int("2") == "2"
    assert requests.as_float(1) == 1.0 and requests.as_float(True) is True and requests.as_float("x") == "x"
    assert requests.methods_value(["fastv"]) == ("fastv",) and requests.methods_value("fastv") == "fastv"
    assert requests.check_task("Question") is False and requests.check_task(None) is True
    with pytest.raises(requests.UserError, match="task must be one of"):
        requests.check_task(["Grounding"])
    values = {"alpha": 1, "theta": 0.8, "r_pivot": 0.7}
    assert requests.method_params(("fastv",), values) == {}
    assert requests.method_params(("fastv", "d2pruner"), values) == {"alpha": 1.0, "theta": 0.8, "r_pivot": 0.7}
    assert requests.method_params([["d2pruner"]], values) == {}  # the package names the bad methods
    assert requests.parse_box(" [10, 20.5, 30, 40] ", (100, 100)) == (10.0, 20.5, 30.0, 40.0)
    assert requests.parse_box("10 20 300 40", (100, 100)) == (10.0, 20.0, 100.0, 40.0)
    assert requests.parse_box("10, 20, 30, 40", (100, 100), scale=0.5) == (5.0, 10.0, 15.0, 20.0)
    assert requests.parse_box("", (100, 100)) is None and requests.parse_box(None, (100, 100)) is None
    for bad in ("10, 20, 30, 40 px", "1, 2, 3", "30, 30, 10, 10", 5):
        with pytest.raises(requests.UserError, match="gt_box"):
            requests.parse_box(bad, (100, 100))


def test_user_messages_and_internal_errors(caplog):
    assert requests.user_message(ValueError("keep_ratio must be in (0, 1]"), "x") == (
        "keep_ratio must be in (0, 1]", True)
    try:
        raise KeyError("details")
    except KeyError as error:
        message, mine = requests.user_message(error, "analysis")
    assert message == "internal error (logged)" and not mine
    assert "analysis failed" in caplog.text and "KeyError" in caplog.text


# ---- bounded stores, the janitor


def test_lru_cache_bounded_by_count_and_bytes():
    cache = LRUCache(3, max_bytes=250, size_of=lambda v: v.nbytes)
    for i in range(3):
        cache.put(str(i), np.zeros(10))  # 80 bytes each
    assert len(cache) == 3
    cache.get("0")
    cache.put("3", np.zeros(10))
    assert "1" not in cache and "0" in cache
    cache.put("big", np.zeros(30))  # 240 bytes: everything else goes
    assert len(cache) == 1 and cache.total_bytes() == 240


def test_photo_store_tokens():
    store = PhotoStore(max_photos=2)
    tokens = [store.add(bytes([i])) for i in range(3)]
    assert store.get(tokens[0]) is None and store.get(tokens[2]) == bytes([2])
    for bad in ("../x", "A" * 24, tokens[2] + "0", None):
        assert store.get(bad) is None


def test_old_files_are_deleted_and_links_never_followed(tmp_path):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    old, new = folder / "sub" / "old.bin", folder / "new.bin"
    old.write_bytes(b"0" * 1000)
    new.write_bytes(b"1" * 10)
    (folder / "link").symlink_to(outside / "keep.txt")
    past = time.time() - 3600
    os.utime(old, (past, past))
    os.utime(folder / "link", (past, past), follow_symlinks=False)
    assert folder_bytes(folder) >= 1010
    assert delete_older_than(folder, 600) == 2
    assert not old.exists() and new.exists() and (outside / "keep.txt").exists()
    # a folder goes once it is empty and old itself (deleting old.bin just touched it: a folder that was just
    # made is about to be filled, e.g. a result's folder)
    assert (folder / "sub").is_dir() and not any((folder / "sub").iterdir())
    os.utime(folder / "sub", (past, past))
    assert delete_older_than(folder, 600) == 0 and not (folder / "sub").exists() and new.exists()
    assert Janitor([folder], 0, 3600).sweep() == 1 and not new.exists()


# ---- the upload-limit middleware


def _call(app, path, body_chunks, headers=()):
    sent = []
    chunks = list(body_chunks)

    async def receive():
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _reader(scope, receive, send):
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_upload_and_request_limits():
    app = RequestLimits(_reader, upload_bytes=1000, files_per_upload=2, request_bytes=500)
    boundary = "XyZ"
    part = f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\nDATA\r\n"
    multipart = ("content-type", f"multipart/form-data; boundary={boundary}")
    two = (part * 2 + f"--{boundary}--\r\n").encode()
    assert _call(app, "/gradio_api/upload", [two], [multipart]) == (200, b"ok")
    many = (part * 5 + f"--{boundary}--\r\n").encode()
    status, body = _call(app, "/gradio_api/upload", [many[i : i + 7] for i in range(0, len(many), 7)], [multipart])
    assert status == 413 and b"At most 2 files" in body  # counted across chunk boundaries
    status, body = _call(app, "/gradio_api/upload", [b"x"], [multipart, ("content-length", "999999")])
    assert status == 413 and b"too large" in body  # refused from the header
    assert _call(app, "/gradio_api/queue/join", [b"x" * 100] * 6)[0] == 413  # no length given: counted
    assert _call(app, "/gradio_api/queue/join", [b"{}"]) == (200, b"ok")
