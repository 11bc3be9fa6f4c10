"""The strict grounding tasks: YAMLs against lmms-eval's RefCOCO tasks, scoring made-up documents, the entry point."""

from __future__ import annotations

import inspect
import random
from pathlib import Path

import pytest
import tomllib
from eval_helpers import REFCOCO_METRICS, require_lmms_eval

from d2pruner.eval import TASKS_DIR
from d2pruner.eval.box_text import format_box

pytestmark = pytest.mark.newest_stack
ROOT = Path(__file__).resolve().parents[1]
#: our strict task → lmms-eval's task with the same dataset and split (folder, file)
STRICT_TASKS = {
    **{f"refcoco_bbox_rec_strict_{s}": ("refcoco", f"refcoco_bbox_rec_{s}") for s in ("val", "test", "testA", "testB")},
    **{f"refcoco+_bbox_rec_strict_{s}": ("refcoco+", f"refcoco+_bbox_rec_{s}") for s in ("val", "testA", "testB")},
    **{f"refcocog_bbox_rec_strict_{s}": ("refcocog", f"refcocog_bbox_rec_{s}") for s in ("val", "test")},
}


@pytest.fixture(scope="module")
def lmms_eval():
    return require_lmms_eval()


def _config(path: Path) -> dict:
    from lmms_eval.utils import load_yaml_config

    return load_yaml_config(str(path), mode="full")


def _source(fn) -> str:
    return inspect.getsource(fn)


@pytest.mark.parametrize("task", sorted(STRICT_TASKS))
def test_strict_task_uses_lmms_evals_data_and_metrics_with_the_raw_expression(lmms_eval, task):
    from d2pruner.eval import refcoco

    folder, upstream_name = STRICT_TASKS[task]
    ours = _config(TASKS_DIR / f"{task}.yaml")
    upstream = _config(Path(lmms_eval.__file__).parent / "tasks" / folder / f"{upstream_name}.yaml")
    assert ours["task"] == task
    for key in ("dataset_path", "test_split", "output_type", "doc_to_target"):
        assert ours[key] == upstream[key], key
    for key in ("process_docs", "doc_to_visual"):  # the same functions (each dataset folder has its own copy)
        assert _source(ours[key]) == _source(upstream[key]), key
    assert ours["doc_to_text"] is refcoco.doc_to_text and ours["process_results"] is refcoco.process_results
    assert ours["generation_kwargs"]["grounding"] == "native"
    upstream_metrics = [m["metric"] for m in upstream["metric_list"]]
    our_metrics = [m["metric"] for m in ours["metric_list"]]
    assert upstream_metrics == list(REFCOCO_METRICS) and our_metrics == [*REFCOCO_METRICS, "no_box_count",
                                                                          "no_box_rate"]


def test_every_task_file_is_shipped_as_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["d2pruner"]
    package = ROOT / "d2pruner"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    files = {p for p in TASKS_DIR.iterdir() if p.is_file()}
    assert len(files) == len(STRICT_TASKS) + 2 and files <= shipped  # + the template and the offline task


def _doc(bbox_xyxy, expression="the dog"):
    return {"question_id": "q", "answer": expression, "bbox": list(bbox_xyxy)}


def test_doc_to_text_is_the_raw_expression(lmms_eval):
    from d2pruner.eval.refcoco import doc_to_text

    assert doc_to_text(_doc((0, 0, 1, 1), "  the man on the left ")) == "the man on the left"
    with pytest.raises(ValueError, match="one referring expression"):
        doc_to_text({"question_id": "q", "answer": ["a", "b"]})


def test_scores_of_made_up_documents(lmms_eval):
    from d2pruner.eval import refcoco

    gt = (0.2, 0.2, 0.6, 0.6)
    docs = [_doc(gt)] * 4
    responses = [
        format_box(gt),  # exact: every metric 1
        format_box((0.2, 0.2, 0.6, 0.44)),  # IoU 0.6: ACC@0.5 yes, ACC@0.7 no, centre (0.4, 0.32) inside
        format_box(None, "I cannot see [0.2, 0.2, 0.6, 0.6]"),  # no box, even if the raw text has one
        "[0.2, 0.2, 0.6, 0.6] and more",  # not exactly a box string: a miss
    ]
    items = {name: [] for name in (*refcoco.SCORERS, *refcoco.NO_BOX_METRICS)}
    for doc, response in zip(docs, responses, strict=True):
        for name, item in refcoco.process_results(doc, [response]).items():
            items[name].append(item)
    assert refcoco.iou(items["refcoco_IoU"]) == pytest.approx((1 + 0.6) / 4)
    assert refcoco.acc05(items["refcoco_ACC@0.5"]) == pytest.approx(2 / 4)
    assert refcoco.acc07(items["refcoco_ACC@0.7"]) == pytest.approx(1 / 4)
    assert refcoco.acc09(items["refcoco_ACC@0.9"]) == pytest.approx(1 / 4)
    assert refcoco.center_acc(items["refcoco_Center_ACC"]) == pytest.approx(2 / 4)
    assert refcoco.no_box_count(items["no_box_count"]) == 2 and refcoco.no_box_rate(items["no_box_rate"]) == 0.5


def test_same_numbers_as_lmms_eval_when_every_answer_has_a_box(lmms_eval):
    from lmms_eval.tasks.refcoco import utils_rec

    from d2pruner.eval import refcoco

    rng = random.Random(0)
    ours, theirs = [], []
    for _ in range(50):
        gt = sorted(rng.random() for _ in range(2)), sorted(rng.random() for _ in range(2))
        pred = sorted(rng.random() for _ in range(2)), sorted(rng.random() for _ in range(2))
        gt_box, pred_box = (gt[0][0], gt[1][0], gt[0][1], gt[1][1]), (pred[0][0], pred[1][0], pred[0][1], pred[1][1])
        doc = {**_doc(gt_box), "answer": "x"}
        response = format_box(pred_box)
        ours.append(refcoco.process_results(doc, [response]))
        theirs.append(utils_rec.refcoco_bbox_rec_process_result(doc, [response]))
    for name, short in zip(REFCOCO_METRICS, utils_rec.COCO_REC_METRICS, strict=True):
        mine = refcoco._mean(name, [o[name] for o in ours])
        upstream = utils_rec.refcoco_bbox_rec_aggregation_result([t[name] for t in theirs], short)
        assert mine == pytest.approx(upstream, abs=1e-12), name


def test_a_missing_box_is_a_miss_even_where_lmms_eval_would_count_a_centre_hit(lmms_eval):
    """lmms-eval scores a missing box as [0, 0, 0, 0], whose centre lies in a ground truth at the top-left corner."""
    from lmms_eval.tasks.refcoco import utils_rec

    from d2pruner.eval import refcoco

    doc = {**_doc((0.0, 0.0, 0.5, 0.5)), "answer": "x"}
    response = format_box(None, "no idea")
    upstream = utils_rec.refcoco_bbox_rec_process_result(doc, [response])["refcoco_Center_ACC"]
    assert utils_rec.refcoco_bbox_rec_aggregation_result([upstream], "Center_ACC") == 1.0
    ours = refcoco.process_results(doc, [response])
    assert refcoco.center_acc([ours["refcoco_Center_ACC"]]) == 0.0 and refcoco.no_box_count([ours["no_box_count"]]) == 1


def test_the_entry_point_registers_the_model(lmms_eval):
    from lmms_eval.models import get_model, get_model_manifest

    from d2pruner.eval.lmms import D2PrunerLMM

    assert get_model_manifest("d2pruner").simple_class_path == "d2pruner.eval.lmms.D2PrunerLMM"
    assert get_model("d2pruner") is D2PrunerLMM


def test_the_offline_task_is_the_bundled_examples_in_refcoco_format(lmms_eval, tmp_path):
    import datasets
    from lmms_eval.tasks.refcoco.utils_rec import refcoco_bbox_rec_preprocess_dataset

    from d2pruner.eval.examples import SPLIT, example_rows, write_dataset
    from d2pruner.resources import EXAMPLES_DIR

    rows = example_rows()
    assert len(rows) == 11 and all(len(r["answer"]) == 1 for r in rows)
    cat = next(r for r in rows if r["file_name"] == "cat.jpg")
    assert cat["bbox"] == [135.0, 84.0, 70.0, 62.0]  # examples.json [135, 84, 205, 146] as COCO's [x, y, w, h]
    split = datasets.load_from_disk(str(write_dataset(tmp_path / "ds")))[SPLIT]
    docs = refcoco_bbox_rec_preprocess_dataset(split)  # lmms-eval's own preprocessing
    doc = next(d for d in docs if d["file_name"] == "cat.jpg")
    assert doc["answer"] == "the cat's eye on the left side of the image"
    assert doc["bbox"] == pytest.approx([135 / 451, 84 / 300, 205 / 451, 146 / 300])
    assert Path(doc["image"].filename).parent == EXAMPLES_DIR or doc["image"].size == (451, 300)
