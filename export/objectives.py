"""Smoothing noise and the two training objectives.

Noise is added to images in [0,1] pixel units, before the model's own normalisation layer.

- ``augment``: E_(x,y) E_delta[-log softmax f(x + delta)_y], one fresh noise draw per example and step
  (Gaussian data augmentation, Cohen et al. 2019).
- ``smoothed``: E_(x,y)[-log( (1/m) sum_j softmax f(x + delta_j)_y )], the negative log of a Monte-Carlo
  estimate of the smoothed classifier's probability of the true class from m draws. Its gradient is
  sum_j w_j * grad log softmax f(x + delta_j)_y with w_j = p_j / sum_k p_k, p_j = softmax f(x + delta_j)_y
  (an importance-weighted average). With m = 1 it equals ``augment``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NOISES = ("gaussian", "uniform", "laplace")
OBJECTIVES = ("augment", "smoothed")


def sample_noise(shape: tuple[int, ...], kind: str, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Draw float32 noise of ``shape`` in [0,1] pixel units.

    gaussian: N(0, scale^2); uniform: U[-scale, scale]; laplace: density exp(-|d|/scale) / (2 scale).
    """
    if kind == "gaussian":
        return torch.randn(shape, generator=generator) * scale
    if kind == "uniform":
        return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * scale
    if kind == "laplace":
        # The difference of two Exp(1) variables is Laplace(0, 1).
        e1 = torch.empty(shape).exponential_(generator=generator)
        e2 = torch.empty(shape).exponential_(generator=generator)
        return (e1 - e2) * scale
    raise ValueError(f"unknown noise {kind!r}; expected one of {', '.join(NOISES)}")


def augment_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: str, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on x + delta; x [B, C, H, W] in [0,1], y [B] int64; returns a scalar."""
    delta = sample_noise(tuple(x.shape), noise, sigma, generator)
    return F.cross_entropy(model(x + delta), y)


def smoothed_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: str, sigma: float, generator: torch.Generator, m: int
) -> torch.Tensor:
    """Mean over the batch of -log((1/m) sum_j softmax f(x + delta_j)_y), m noise draws per example.

    Costs m forward/backward passes per example (the batch is repeated m times). Computed stably as
    log(m) - logsumexp_j log_softmax f(x + delta_j)_y.
    """
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    b = x.shape[0]
    xr = x.repeat_interleave(m, dim=0)  # [B*m, C, H, W]; example i's draws are rows i*m .. i*m+m-1
    delta = sample_noise(tuple(xr.shape), noise, sigma, generator)
    logp = F.log_softmax(model(xr + delta), dim=1)  # [B*m, K]
    logp_y = logp.gather(1, y.repeat_interleave(m).unsqueeze(1)).view(b, m)
    return (math.log(m) - torch.logsumexp(logp_y, dim=1)).mean()


def loss_fn(
    objective: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: str,
    sigma: float,
    generator: torch.Generator,
    m: int = 1,
) -> torch.Tensor:
    """Dispatch on ``objective`` ('augment' or 'smoothed')."""
    if objective == "augment":
        return augment_loss(model, x, y, noise, sigma, generator)
    if objective == "smoothed":
        return smoothed_loss(model, x, y, noise, sigma, generator, m)
    raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
