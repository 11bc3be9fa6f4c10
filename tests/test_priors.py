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
