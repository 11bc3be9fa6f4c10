"""The paper's settings as presets."""

import pytest

from d2pruner import paper_settings


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_5_vl", "internvl"])
def test_understanding_uses_alpha_one_and_layer_two(family):
    assert paper_settings("understanding", family) == {"alpha": 1.0, "theta": 0.8, "r_pivot": 0.7, "layer": 2}


@pytest.mark.parametrize(("family", "layer"), [("llava", 5), ("llava_next", 2), ("qwen2_5_vl", 2), ("internvl", 2)])
def test_localization_uses_alpha_half_and_layer_five_only_for_llava(family, layer):
    assert paper_settings("localization", family) == {"alpha": 0.5, "theta": 0.8, "r_pivot": 0.7, "layer": layer}


def test_bad_task_or_family_names_the_choices():
    with pytest.raises(ValueError, match=r"task must be one of \('understanding', 'localization'\)"):
        paper_settings("grounding", "llava")
    with pytest.raises(ValueError, match="family"):
        paper_settings("understanding", "")
