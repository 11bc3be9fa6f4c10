"""Prior calibration: equals the mean of independently computed attention maps, early exit, determinism,
resumability, the CLI, datasets folders, automatic calibration and fitting priors to dynamic layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILY_NAMES
from PIL import Image

import d2pruner.calibrate as calibration_cli
import d2pruner.priors.__main__ as priors_cli
from d2pruner.families import family_for, family_named
from d2pruner.priors import Prior, cut_mosaic, load_prior, resize_keeping_mass, tile_mosaic
from d2pruner.priors import calibration as calibration
from d2pruner.priors import fit_prior as _fit_prior
from d2pruner.priors.calibration import PriorAccumulator, content_free_images, folder_images


def calibrate(analyzer, images, **kwargs):
    """Calibration observes through the analyzer and knows nothing else of it."""
    return calibration.calibrate(analyzer.observe, images, model_id=analyzer.name, family=analyzer.model_family,
                                 **kwargs)


def fit_prior(prior, family, grids, arrangement=(1, 1)):
    family = family_named(family)
    return _fit_prior(prior, grids, role_of=family.prior_role, dynamic_roles=family.dynamic_prior_roles,
                      arrangement=arrangement)


def cli(argv):
    """The calibration CLI (``python -m d2pruner.calibrate``) and the prior viewer (``python -m d2pruner.priors``)."""
    return priors_cli.main(argv) if argv[0] == "show" else calibration_cli.main(argv[1:])


PROMPT = "Please describe the provided image."


def synthetic_images(count: int = 3) -> list[tuple[str, object]]:
    """Small images of different sizes and aspect ratios (so dynamic grids change shape)."""
    sizes = [(168, 112), (96, 160), (200, 90), (128, 128)]
    images = []
    for i in range(count):
        rng = np.random.RandomState(i)
        w, h = sizes[i % len(sizes)]
        arr = (rng.rand(h, w, 3) * 255).astype("uint8")
        images.append((f"img{i}", (lambda arr=arr: Image.fromarray(arr))))
    return images


def expected_prior(analyzer, images, layer: int) -> dict[str, torch.Tensor]:
    """The mean attention map per role, from full analyze() runs (not the early-exit path)."""
    family = analyzer.model_family
    sums: dict[str, torch.Tensor] = {}
    for _, loader in images:
        result = analyzer.analyze(loader(), PROMPT, methods=("fastv",), layer=layer, prior="uniform", max_new_tokens=1)
        parts: dict[str, list[torch.Tensor]] = {}
        for grid, values in zip(result.grids, result.attention, strict=True):
            parts.setdefault(family.prior_role(grid.name), []).append(torch.from_numpy(values).double())
        for role, maps in parts.items():
            values = tile_mosaic(maps, family.tile_arrangement(result.layout)) if role == "tiles" else maps[0]
            if role in family.dynamic_prior_roles:
                values = resize_keeping_mass(values, (24, 24)).double()
            sums[role] = sums.get(role, 0) + values
    return {role: (total / len(images)).float() for role, total in sums.items()}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_calibrated_prior_is_the_mean_of_analyzer_attention_maps(tiny_analyzers, name):
    analyzer = tiny_analyzers.get(name)
    images = synthetic_images(3)
    prior = calibrate(analyzer, images, layer=2, source="synthetic")
    expected = expected_prior(analyzer, images, layer=2)
    assert set(prior.maps) == set(expected)
    for role, values in expected.items():
        torch.testing.assert_close(prior.maps[role], values, rtol=1e-4, atol=1e-7)
    assert prior.num_images == 3 and prior.layer == 2 and prior.model_id == name
    assert prior.info["family"] == analyzer.family


def test_calibration_is_deterministic(tiny_analyzers):
    analyzer = tiny_analyzers.get("tiny-qwen2.5-vl")
    first = calibrate(analyzer, synthetic_images(3), layer=1)
    second = calibrate(analyzer, synthetic_images(3), layer=1)
    for role in first.maps:
        assert torch.equal(first.maps[role], second.maps[role])


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-internvl"])
def test_early_exit_stops_after_layer_k_minus_1(tiny_analyzers, name):
    analyzer = tiny_analyzers.get(name)
    layers = family_for(analyzer.model).language_model(analyzer.model).layers
    calls = [0] * len(layers)
    head_calls = []
    handles = [
        layer.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    handles.append(analyzer.model.get_output_embeddings().register_forward_hook(lambda *a: head_calls.append(1)))
    try:
        observation = analyzer.observe(synthetic_images(1)[0][1](), PROMPT, layer=2)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [1, 1] + [0] * (len(layers) - 2)
    assert head_calls == []
    assert observation.attention_flat.shape == (sum(g.rows * g.cols for g in observation.grids),)
    assert observation.hidden.shape[0] == observation.attention_flat.shape[0]


def test_unreadable_images_are_skipped_and_reported(tiny_analyzers):
    def broken():
        raise OSError("truncated file")

    images = [*synthetic_images(2), ("broken.jpg", broken)]
    prior = calibrate(tiny_analyzers.get("tiny-llava"), images, layer=2)
    assert prior.num_images == 2
    assert prior.info["skipped_images"] == ["broken.jpg: OSError"]


def test_interrupted_calibration_resumes_to_the_same_prior(tiny_analyzers, tmp_path):
    analyzer = tiny_analyzers.get("tiny-llava-next")
    images = synthetic_images(4)
    checkpoint = tmp_path / "p.safetensors.partial"

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        calibrate(
            analyzer,
            [*images[:2], (images[2][0], interrupt), *images[3:]],
            layer=2,
            checkpoint=checkpoint,
            checkpoint_every=1,
        )
    assert checkpoint.exists()
    seen = []
    resumed = calibrate(
        analyzer, images, layer=2, checkpoint=checkpoint, checkpoint_every=1, progress=lambda d, t, m: seen.append(d)
    )
    assert seen == [3, 4]  # the first two images came from the checkpoint
    assert not checkpoint.exists()
    full = calibrate(analyzer, images, layer=2)
    for role in full.maps:
        torch.testing.assert_close(resumed.maps[role], full.maps[role], rtol=1e-6, atol=1e-9)


def test_content_free_images_are_deterministic_and_contentless():
    first = [loader() for _, loader in content_free_images()]
    second = [loader() for _, loader in content_free_images()]
    assert len(first) == 16 and all(im.size == (640, 480) for im in first)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second, strict=True))
    assert np.asarray(first[0]).std() == 0  # a blank image


def test_folder_images_sorted_and_limited(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        path = tmp_path / name
        if name.endswith(".txt"):
            path.write_text("not an image")
        else:
            Image.new("RGB", (30, 20), "red").save(path)
    images = folder_images(tmp_path)
    assert [name for name, _ in images] == ["a.jpg", "b.png"]
    assert images[0][1]().size == (30, 20)
    assert len(folder_images(tmp_path, limit=1)) == 1
    with pytest.raises(ValueError, match="does not exist"):
        folder_images(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        folder_images(empty)


def test_datasets_folder_is_an_image_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    pictures = [Image.new("RGB", (40 + 8 * i, 32), (40 * i, 10, 10)) for i in range(3)]
    data = datasets.Dataset.from_dict({"image": pictures, "caption": ["a", "b", "c"]}).cast_column(
        "image", datasets.Image()
    )
    data.save_to_disk(str(tmp_path / "ds"))
    images = folder_images(tmp_path / "ds", limit=2)
    assert [name for name, _ in images] == ["image[0]", "image[1]"]
    assert images[1][1]().size == (48, 32)


def test_cli_calibrates_shows_and_rejects_bad_arguments(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (_, loader) in enumerate(synthetic_images(3)):
        loader().save(folder / f"{i}.png")
    out = tmp_path / "out" / "prior.safetensors"
    code = cli(
        ["calibrate", "--model", "tiny-llava", "--images", str(folder), "--out", str(out), "--num", "2"]
    )
    assert code == 0
    prior = load_prior(out, model_id="tiny-llava", layer=2)
    assert prior.num_images == 2 and prior.info["early_exit"]["speedup"] > 0
    assert not out.with_name(out.name + ".partial").exists()
    assert cli(["show", str(out)]) == 0
    assert "natural prior of tiny-llava, layer 2, 2 images" in capsys.readouterr().out
    free = tmp_path / "free.safetensors"
    code = cli(
        ["calibrate", "--model", "tiny-llava", "--kind", "content-free", "--out", str(free), "--no-speedup"]
    )
    assert code == 0 and load_prior(free).kind == "content-free" and load_prior(free).num_images == 16
    assert cli(["calibrate", "--model", "tiny-llava", "--out", str(free)]) == 2
    assert "--images is required" in capsys.readouterr().err
    assert cli(["calibrate", "--model", "tiny-llava", "--images", str(tmp_path / "nope")]) == 2
    assert cli(["calibrate", "--model", "tiny-llava", "--images", str(folder), "--canonical", "big"]) == 2
    assert cli(["show", str(tmp_path / "nope.safetensors")]) == 2


def test_automatic_calibration_caches_and_falls_back_to_a_writable_folder(tiny_models, tmp_path, monkeypatch):
    from d2pruner.analysis import Analyzer

    small = tmp_path / "bundled"
    small.mkdir()
    for i, (_, loader) in enumerate(synthetic_images(2)):
        loader().save(small / f"{i}.png")
    monkeypatch.setattr(calibration, "BUNDLED_IMAGES", small)
    tiny = tiny_models.get("tiny-llava")
    blocker = tmp_path / "read-only"
    blocker.write_text("a file where a folder would be: saving here fails")
    cache = tmp_path / "cache"
    analyzer = Analyzer(tiny.model, tiny.processor, name="tiny-llava", prior_dirs=[blocker / "priors", cache])
    seen = []
    prior = analyzer.get_prior(2, progress=lambda done, total, message: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    assert (cache / "tiny-llava__layer2.safetensors").is_file()
    assert analyzer.get_prior(2) is prior  # cached in memory
    again = Analyzer(tiny.model, tiny.processor, name="tiny-llava", prior_dirs=[cache])
    seen.clear()
    loaded = again.get_prior(2, progress=lambda *a: seen.append(a))
    assert seen == [] and torch.equal(loaded.maps["image"], prior.maps["image"])
    result = again.analyze(synthetic_images(1)[0][1](), "What?", methods=("d2pruner-di",), max_new_tokens=1)
    assert result.prior_source == loaded.describe()
    expected = result.attention_flat / (loaded.maps["image"].numpy().ravel() + 1e-7)
    np.testing.assert_allclose(result.relative_flat, expected, rtol=1e-5)
    free = again.get_prior(2, "content-free")
    assert free.kind == "content-free" and (cache / "tiny-llava__layer2__content-free.safetensors").is_file()
    with pytest.raises(ValueError, match="prior kind must be one of"):
        again.get_prior(2, "sketchy")


# ------------------------------------------------------------------------- fitting to layouts
def test_tile_mosaic_round_trip():
    tiles = [torch.full((4, 4), float(i)) for i in range(6)]
    mosaic = tile_mosaic(tiles, (2, 3))
    assert mosaic.shape == (8, 12) and mosaic[0, 4] == 1 and mosaic[4, 0] == 3
    assert all(torch.equal(a, b) for a, b in zip(cut_mosaic(mosaic, (2, 3)), tiles, strict=True))
    with pytest.raises(ValueError, match="do not form"):
        tile_mosaic(tiles, (2, 2))


def test_fit_prior_keeps_mass_for_dynamic_roles_and_values_for_fixed_ones():
    rows = torch.linspace(0.1, 1.0, 24)[:, None].expand(24, 24).contiguous()
    prior = Prior(maps={"base": rows, "highres": rows / 10}, model_id="m", layer=2)
    base, highres = fit_prior(prior, "llava_next", [("base", 24, 24), ("highres", 30, 40)])
    assert torch.equal(base, rows)
    assert highres.shape == (30, 40)
    torch.testing.assert_close(highres.sum(), (rows / 10).sum())
    assert torch.all(highres[1:].mean(1) > highres[:-1].mean(1))  # bottom-heavy stays bottom-heavy
    flat = Prior(maps={"image": torch.full((24, 24), 0.5)}, model_id="m", layer=2)
    (fitted,) = fit_prior(flat, "qwen2_5_vl", [("image", 7, 13)])
    assert torch.allclose(fitted, torch.full((7, 13), 0.5 * 576 / 91))


def test_fit_prior_cuts_internvl_tiles_from_the_mosaic():
    mosaic = torch.arange(16 * 24, dtype=torch.float32).reshape(16, 24) + 1
    prior = Prior(maps={"tiles": mosaic, "thumbnail": torch.ones(4, 4)}, model_id="m", layer=2)
    grids = [(f"tile{i}", 4, 4) for i in range(6)] + [("thumbnail", 4, 4)]
    fitted = fit_prior(prior, "internvl", grids, arrangement=(2, 3))
    assert [tuple(f.shape) for f in fitted] == [(4, 4)] * 7
    joined = tile_mosaic(fitted[:6], (2, 3))
    torch.testing.assert_close(joined, resize_keeping_mass(mosaic, (8, 12)))
    assert torch.equal(fitted[6], torch.ones(4, 4))


def test_accumulator_rejects_a_fixed_role_changing_shape():
    class Grid:
        def __init__(self, name, rows, cols):
            self.name, self.rows, self.cols = name, rows, cols

    class Obs:
        def __init__(self, shape):
            self.grids = [Grid("image", *shape)]
            self.attention = [np.ones(shape, dtype=np.float32)]
            self.layout = None

    acc = PriorAccumulator(family=family_named("llava"))
    acc.add(Obs((4, 4)))
    with pytest.raises(ValueError, match="changed shape"):
        acc.add(Obs((5, 4)))
    dynamic = PriorAccumulator(family=family_named("qwen2_5_vl"), canonical=(6, 6))
    dynamic.add(Obs((4, 4)))
    dynamic.add(Obs((5, 7)))
    assert dynamic.mean()["image"].shape == (6, 6)
    torch.testing.assert_close(dynamic.mean()["image"].sum(), torch.tensor(16.0 + 35.0) / 2)


# ------------------------------------------------------------------------------- shipped priors
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_shipped_tiny_priors_load_and_match_their_model(name, tiny_analyzers):
    from d2pruner.priors import prior_filename
    from d2pruner.resources import BUNDLED_PRIORS_DIR as BUNDLED_PRIORS

    analyzer = tiny_analyzers.get(name)
    for layer in (1, 2, 3):
        for kind, images in (("natural", 40), ("content-free", 16)):
            prior = load_prior(BUNDLED_PRIORS / prior_filename(name, layer, kind), model_id=name, layer=layer)
            assert prior.kind == kind and prior.num_images == images
            assert prior.info["family"] == analyzer.family
            assert prior.prompt == PROMPT


def test_default_analysis_uses_the_shipped_natural_prior(tiny_analyzers, test_image):
    result = tiny_analyzers.get("tiny-llava").analyze(test_image, "What?", methods=("d2pruner-di",), max_new_tokens=1)
    assert result.prior_source.startswith("natural prior of tiny-llava, layer 2, 40 images from assets/calibration")
    content_free = tiny_analyzers.get("tiny-llava").analyze(
        test_image, "What?", methods=("d2pruner-di",), max_new_tokens=1, prior="content-free"
    )
    assert content_free.prior_source.startswith("content-free prior of tiny-llava, layer 2, 16 images")
    assert not np.allclose(result.prior[0], content_free.prior[0])
