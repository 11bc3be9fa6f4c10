"""Fingerprints of analyses on the tiny models, to check that a refactor changes no result.

``python tests/golden.py`` rewrites ``tests/data/golden-analyses.json`` (run it only on a commit whose results are
the reference); ``tests/test_golden.py`` recomputes the fingerprints and compares: kept indices, answers, boxes,
grids and token counts exactly, attention / prior / relative attention within 1e-5 (relative), analytic efficiency
numbers exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN = Path(__file__).resolve().parent / "data" / "golden-analyses.json"
FAMILIES = ("tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-internvl")
METHODS = ("fastv", "dart", "divprune", "mmr", "d2pruner", "d2pruner-di", "d2pruner-nospatial")
#: (image name, width, height, task, keep ratio, layer, prior)
CASES = (
    ("coffee.jpg", None, None, "grounding", 0.25, 2, "auto"),
    ("two_dogs.jpg", None, None, "question", 0.5, 1, "content-free"),
    ("synthetic", 150, 90, "question", 0.1, 3, "uniform"),
)


def case_image(name: str, width: int | None, height: int | None) -> Image.Image:
    from d2pruner.resources import EXAMPLES_DIR

    if name == "synthetic":
        rng = np.random.RandomState(7)
        arr = (rng.rand(height, width, 3) * 255).astype("uint8")
        arr[10:40, 20:80] = (30, 200, 60)
        return Image.fromarray(arr)
    return Image.open(EXAMPLES_DIR / name).convert("RGB")


def fingerprint(analyzer, case) -> dict:
    name, width, height, task, keep_ratio, layer, prior = case
    image = case_image(name, width, height)
    prompt = "the spoon on the saucer" if task == "grounding" else "What is in the picture?"
    r = analyzer.analyze(image, prompt, methods=METHODS, keep_ratio=keep_ratio, layer=layer,
                         grounding=task == "grounding", max_new_tokens=6, prior=prior)
    return {
        "case": list(case),
        "num_candidates": r.num_candidates,
        "n": r.n,
        "prompt_tokens": r.prompt_tokens,
        "grids": [[g.rows, g.cols, g.offset] for g in r.grids],
        "attention": [float(v) for v in r.attention_flat],
        "prior": [float(v) for m in r.prior for v in np.asarray(m).ravel()],
        "relative": [float(v) for v in r.relative_flat],
        "regions_sum": float(np.nansum(r.regions)),
        "num_edges": len(r.graph_edges),
        "vanilla_answer": r.vanilla_answer,
        "vanilla_box": None if r.vanilla_box is None else [float(v) for v in r.vanilla_box],
        "methods": {
            m: {"kept": [int(i) for i in res.kept], "answer": res.answer,
                "box": None if res.box is None else [float(v) for v in res.box]}
            for m, res in r.methods.items()
        },
    }


def compute(prior_dir: Path) -> dict:
    import torch

    from d2pruner import load

    torch.set_num_threads(1)
    out = {}
    for family in FAMILIES:
        analyzer = load(family)
        analyzer.prior_dirs = [prior_dir]
        out[family] = [fingerprint(analyzer, case) for case in CASES]
    return out


if __name__ == "__main__":
    import shutil
    import tempfile

    from d2pruner.resources import BUNDLED_PRIORS_DIR

    tmp = Path(tempfile.mkdtemp())
    for path in BUNDLED_PRIORS_DIR.glob("*.safetensors"):
        shutil.copy(path, tmp / path.name)
    GOLDEN.write_text(json.dumps(compute(tmp), indent=0))
    print(f"wrote {GOLDEN}", file=sys.stderr)
