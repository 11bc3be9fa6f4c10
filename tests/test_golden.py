"""The analyses on the tiny models give the recorded results (tests/golden.py): a refactor must change nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from golden import CASES, FAMILIES, GOLDEN, fingerprint

RECORDED = json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case_index", range(len(CASES)))
def test_analysis_equals_the_recorded_one(tiny_analyzers, family, case_index):
    got = fingerprint(tiny_analyzers.get(family), CASES[case_index])
    want = RECORDED[family][case_index]
    for key in ("attention", "prior", "relative"):
        np.testing.assert_allclose(got.pop(key), want.pop(key), rtol=1e-5, atol=1e-9, err_msg=key)
    assert got.pop("regions_sum") == pytest.approx(want.pop("regions_sum"), rel=1e-12)
    assert got == want
