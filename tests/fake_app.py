"""``python tests/fake_app.py --port N`` — the app on the fake analyzer (tests/fake_analyzer.py): real layouts, real
uploads, queue, caches, files and limits, analyses that answer at once (a prompt containing "[slow]" takes
``--delay`` seconds). For the server tests that measure the app itself (the queue, memory and disk over many
requests), not the model."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fake_analyzer import FakeAnalyzer, OnlineProbe, layout_for

import app as lab_app
from d2pruner.serving.host import AllowList, ModelHost
from d2pruner.serving.limits import Limits
from d2pruner.serving.store import Janitor


class SlowOnRequest(FakeAnalyzer):
    """Answers at once, except for a prompt containing "[slow]" (``slow`` seconds)."""

    def __init__(self, name, layout, slow: float):
        super().__init__(name, layout)
        self.slow = slow

    def analyze(self, image, prompt, **kwargs):
        if isinstance(prompt, str) and "[slow]" in prompt:
            import time

            time.sleep(self.slow)
        return super().analyze(image, prompt, **kwargs)


def loader(name, *, device="cpu", local_folder=None, delay=0.5):
    return SlowOnRequest(name, layout_for(name), slow=delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = Limits.from_env()
    host = ModelHost(device="cpu", allowed=AllowList(("*",)), budget_bytes=1e12, probe=OnlineProbe(),
                     loader=functools.partial(loader, delay=args.delay))
    lab = lab_app.LabApp(host, default_model="llava-hf/llava-1.5-7b-hf", limits=limits)
    Janitor([lab.out_dir, lab_app._gradio_upload_dir()], limits.file_age_seconds, limits.cleanup_seconds).start()
    demo = lab_app.build_demo(lab)
    print(f"out_dir={lab.out_dir}", flush=True)
    demo.launch(server_name="127.0.0.1", server_port=args.port, **lab_app.launch_kwargs(lab))


if __name__ == "__main__":
    main()
