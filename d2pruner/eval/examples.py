"""The offline grounding task ``d2pruner_examples_bbox_rec``: the bundled example photos as a RefCOCO split.

Each photo of ``d2pruner/assets/examples`` with its referring expression and hand-placed box becomes one
RefCOCO-format document (``question_id``, ``file_name``, ``image``, ``answer`` = [expression], ``bbox`` =
[x, y, w, h] in pixels, as COCO stores it); the task then runs exactly the strict RefCOCO pipeline (same
preprocessing, prompt handling and metrics). Nothing is downloaded: the documents are written as a local
``datasets`` folder (images referenced by path) and read by lmms-eval's ``load_from_disk`` path.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path

from lmms_eval.api.task import ConfigurableTask

from d2pruner.resources import EXAMPLES_DIR

SPLIT = "test"


def example_rows(folder: Path = EXAMPLES_DIR) -> list[dict]:
    """The bundled examples as RefCOCO documents (``image`` is the photo's path)."""
    entries = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
    rows = []
    for entry in entries:
        x1, y1, x2, y2 = (float(v) for v in entry["box"])
        rows.append({
            "question_id": Path(entry["file"]).stem,
            "file_name": entry["file"],
            "image": str(folder / entry["file"]),
            "answer": [entry["referring_expression"]],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
        })
    return rows


def write_dataset(target: Path, folder: Path = EXAMPLES_DIR) -> Path:
    """Save the examples as a ``datasets.DatasetDict`` with one split, :data:`SPLIT`, under ``target``."""
    import datasets

    features = datasets.Features({
        "question_id": datasets.Value("string"),
        "file_name": datasets.Value("string"),
        "image": datasets.Image(),
        "answer": datasets.Sequence(datasets.Value("string")),
        "bbox": datasets.Sequence(datasets.Value("float64")),
    })
    split = datasets.Dataset.from_list(example_rows(folder), features=features)
    datasets.DatasetDict({SPLIT: split}).save_to_disk(str(target))
    return target


class BundledExamplesTask(ConfigurableTask):
    """A :class:`ConfigurableTask` whose dataset is the bundled examples (the YAML's ``class``)."""

    def __init__(self, config: dict) -> None:
        super().__init__(config={k: v for k, v in config.items() if k != "class"})

    def download(self, dataset_kwargs: dict | None = None) -> None:
        folder = Path(tempfile.mkdtemp(prefix="d2pruner-examples-"))
        weakref.finalize(self, shutil.rmtree, folder, True)
        self.DATASET_PATH = str(write_dataset(folder / "dataset"))
        super().download({**(dataset_kwargs or {}), "load_from_disk": True})
