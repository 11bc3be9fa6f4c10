"""Prior resizing: bilinear with half-pixel centres, equal to cv2.resize(INTER_LINEAR)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from d2pruner.priors import resize_prior


@pytest.mark.parametrize(
    ("source", "target"), [((24, 24), (8, 8)), ((24, 24), (4, 6)), ((5, 7), (24, 24)), ((3, 3), (48, 60))]
)
def test_resize_matches_cv2_inter_linear(source, target):
    prior = torch.rand(*source, generator=torch.Generator().manual_seed(0))
    expected = cv2.resize(prior.numpy(), (target[1], target[0]), interpolation=cv2.INTER_LINEAR)
    got = resize_prior(prior, target)
    assert got.shape == target and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_resize_keeps_a_constant_field_and_is_identity_at_same_size():
    assert torch.allclose(resize_prior(torch.full((24, 24), 0.25), (7, 13)), torch.full((7, 13), 0.25))
    prior = torch.rand(6, 9)
    assert torch.equal(resize_prior(prior, (6, 9)), prior)


def test_resize_preserves_mass_ordering_of_a_monotone_prior():
    rows = torch.linspace(0.1, 1.0, 24)[:, None].expand(24, 24)  # bottom-heavy, as LLaVA's bias
    resized = resize_prior(rows, (5, 8))
    assert torch.all(resized[1:] > resized[:-1])
    assert int(resized.argmax()) // 8 == 4


def test_resize_rejects_non_2d():
    with pytest.raises(ValueError, match="prior must be 2-D"):
        resize_prior(torch.rand(4), (2, 2))


# ------------------------------------------------------------------------------------- storage
from d2pruner.priors import Prior, PriorFileError, load_prior, prior_filename, save_prior, uniform_prior  # noqa: E402


def make_prior(**overrides) -> Prior:
    fields = {
        "maps": {"base": torch.rand(24, 24) + 0.01, "highres": torch.rand(32, 32)},
        "model_id": "llava-hf/llava-v1.6-vicuna-7b-hf",
        "layer": 2,
        "num_images": 1000,
        "source": "COCO val2017",
        "prompt": "Please describe the provided image.",
        "info": {"library": "d2pruner 0.1.0", "family": "llava_next"},
    }
    return Prior(**{**fields, **overrides})


def test_save_load_round_trip_keeps_data_and_metadata(tmp_path):
    prior = make_prior()
    path = save_prior(prior, tmp_path / prior_filename(prior.model_id, prior.layer))
    assert path.name == "llava-hf--llava-v1.6-vicuna-7b-hf__layer2.safetensors"
    loaded = load_prior(path, model_id=prior.model_id, layer=2)
    for role in prior.maps:
        assert torch.equal(loaded.maps[role], prior.maps[role])
    assert (loaded.model_id, loaded.layer, loaded.kind) == (prior.model_id, 2, "natural")
    assert (loaded.num_images, loaded.source, loaded.prompt) == (1000, "COCO val2017", prior.prompt)
    assert loaded.info["family"] == "llava_next" and "created" in loaded.info
    assert loaded.grids == {"base": (24, 24), "highres": (32, 32)}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_interrupted_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = save_prior(make_prior(), tmp_path / "p.safetensors")
    before = path.read_bytes()

    def explode(tensors, filename, metadata=None):  # dies half-way through writing
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", explode)
    with pytest.raises(KeyboardInterrupt):
        save_prior(make_prior(num_images=5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]


def test_missing_truncated_and_garbage_files_are_rejected_by_name(tmp_path):
    with pytest.raises(PriorFileError, match="nothing.safetensors does not exist"):
        load_prior(tmp_path / "nothing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 this is not a safetensors file")
    with pytest.raises(PriorFileError, match="garbage.safetensors is not a readable safetensors file"):
        load_prior(garbage)
    good = save_prior(make_prior(), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(PriorFileError, match="truncated.safetensors"):
        load_prior(truncated)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(PriorFileError, match="empty.safetensors"):
        load_prior(empty)


def _write_raw(path, tensors, metadata):
    import json

    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=None if metadata is None else {"d2pruner_prior": json.dumps(metadata)})
    return path


def _metadata(**overrides):
    base = {
        "format": "d2pruner-prior/1",
        "model_id": "m",
        "layer": 2,
        "kind": "natural",
        "grids": {"image": [4, 4]},
        "num_images": 3,
        "source": "s",
        "prompt": "p",
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"image": torch.rand(4, 4)}, None, "has no d2pruner metadata"),
        ({"image": torch.rand(4, 5)}, _metadata(), r"shape \(4, 5\), expected \(4, 4\)"),
        ({"image": torch.rand(4, 4), "x": torch.rand(2, 2)}, _metadata(), "holds maps"),
        ({"image": torch.full((4, 4), float("nan"))}, _metadata(), "finite"),
        ({"image": -torch.rand(4, 4)}, _metadata(), "non-negative"),
        ({"image": torch.rand(4, 4)}, _metadata(format="other/9"), "not in format"),
        ({"image": torch.rand(4, 4)}, {k: v for k, v in _metadata().items() if k != "layer"}, "lacks"),
        ({"image": torch.rand(4, 4)}, _metadata(grids={"image": [4, -4]}), "malformed grids"),
        ({"image": torch.rand(4, 4)}, _metadata(kind="weird"), "kind must be one of"),
    ],
)
def test_wrong_content_is_rejected_with_the_file_name(tmp_path, tensors, metadata, message):
    path = _write_raw(tmp_path / "bad.safetensors", tensors, metadata)
    with pytest.raises(PriorFileError, match=message) as caught:
        load_prior(path)
    assert "bad.safetensors" in str(caught.value)


def test_mismatched_model_or_layer_is_rejected(tmp_path):
    path = save_prior(make_prior(), tmp_path / "p.safetensors")
    with pytest.raises(PriorFileError, match="calibrated for 'llava-hf/llava-v1.6-vicuna-7b-hf', not 'other'"):
        load_prior(path, model_id="other")
    with pytest.raises(PriorFileError, match="is for layer 2, not layer 3"):
        load_prior(path, layer=3)


def test_prior_container_validates_and_serves_roles():
    with pytest.raises(ValueError, match="non-negative"):
        make_prior(maps={"image": -torch.ones(2, 2)})
    with pytest.raises(ValueError, match="at least one map"):
        make_prior(maps={})
    with pytest.raises(ValueError, match="layer must be an integer >= 1"):
        make_prior(layer=0)
    single = make_prior(maps={"image": torch.ones(3, 3)})
    assert single.map_for("tile7") is single.maps["image"]
    with pytest.raises(KeyError, match="no map for grid 'tile0'"):
        make_prior().map_for("tile0")
    flat = uniform_prior({"image": (4, 6)}, model_id="m", layer=2)
    assert torch.allclose(flat.maps["image"].sum(), torch.tensor(1.0)) and flat.maps["image"].std() == 0


def test_prior_filename_rejects_unsafe_ids():
    assert prior_filename("tiny-llava", 1, "content-free") == "tiny-llava__layer1__content-free.safetensors"
    with pytest.raises(ValueError, match="cannot build a file name"):
        prior_filename("..", 2)
