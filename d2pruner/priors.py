"""Positional-bias priors: resizing to a token grid (calibration and storage come with issue 4)."""

from __future__ import annotations

import torch


def resize_prior(prior: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a 2-D prior to ``size`` with half-pixel centres.

    This is ``align_corners=False`` bilinear interpolation without antialiasing — the sampling that
    ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` and ``torch.nn.functional.interpolate`` use — so a
    constant prior stays constant and resizing to the prior's own size is the identity.

    Args:
        prior: [h', w'] any floating dtype.
        size: (h, w) target grid.
    Returns:
        [h, w] float32 on the prior's device.
    """
    if prior.ndim != 2:
        raise ValueError(f"prior must be 2-D [h', w']; got shape {tuple(prior.shape)}")
    prior = prior.float()
    if tuple(prior.shape) == tuple(size):
        return prior.clone()
    resized = torch.nn.functional.interpolate(prior[None, None], size=tuple(size), mode="bilinear", align_corners=False)
    return resized[0, 0]
