"""SphereFace (Liu et al. 2017) margin maths: cos(mθ) from cos θ, ψ(θ), and the λ schedule.

Everything works on cos θ directly: `acos` has an infinite derivative at ±1, so the angle
never enters the graph; k is read off thresholds on cos θ instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SUPPORTED_MARGINS = (1, 2, 3, 4)


def check_margin(margin: int) -> None:
    if margin not in SUPPORTED_MARGINS:
        raise ValueError(f"margin={margin!r}: expected an integer in {SUPPORTED_MARGINS}")


def cos_multiple_angle(cos_theta: Tensor, margin: int) -> Tensor:
    """cos(mθ) as the Chebyshev polynomial T_m(cos θ)."""
    check_margin(margin)
    c = cos_theta
    if margin == 1:
        return c
    if margin == 2:
        return 2 * c**2 - 1
    if margin == 3:
        return (4 * c**2 - 3) * c
    return 8 * c**4 - 8 * c**2 + 1


def angle_sector(cos_theta: Tensor, margin: int) -> Tensor:
    """k with θ ∈ [kπ/m, (k+1)π/m], from cos θ (integer-valued, same dtype, no gradient)."""
    check_margin(margin)
    sector = torch.zeros_like(cos_theta)
    for boundary in range(1, margin):
        sector += (cos_theta.detach() <= math.cos(boundary * math.pi / margin)).to(cos_theta.dtype)
    return sector


def sphereface_psi(cos_theta: Tensor, margin: int) -> Tensor:
    """ψ(θ) = (-1)^k cos(mθ) − 2k: continuous and decreasing on [0, π], equal to cos θ at m=1."""
    sector = angle_sector(cos_theta, margin)
    sign = 1 - 2 * torch.remainder(sector, 2)
    return sign * cos_multiple_angle(cos_theta, margin) - 2 * sector


def sphereface_lambda(
    iteration: int, base: float, gamma: float, power: float, minimum: float
) -> float:
    """λ = max(minimum, base · (1 + gamma · iteration)^(−power)), SphereFace's annealing."""
    return max(minimum, base * (1.0 + gamma * iteration) ** (-power))


def combined_margin_cos(cos_theta: Tensor, m1: float, m2: float, m3: float) -> Tensor:
    """insightface's combined margin cos(m1·θ + m2) − m3 of the target cosine.

    (1, m, 0) is ArcFace, (1, 0, m) CosFace. Where m1·θ + m2 passes π the angular form would
    start rising again (a wrong class could then beat the target by moving away), so, as
    ArcFace's and arcface_torch's code do, those rows fall back to cos θ − m2·sin(m2) − m3.
    The angle is taken for the target column only; cos θ is clamped inside [-1, 1] by one
    ulp so that `acos`'s derivative stays finite at perfect alignment.
    """
    if m1 == 1.0 and m2 == 0.0:
        return cos_theta - m3  # CosFace: no angle needed
    limit = 1.0 - torch.finfo(cos_theta.dtype).eps
    theta = torch.acos(cos_theta.clamp(-limit, limit))
    angular = torch.cos(m1 * theta + m2) - m3
    # Rows with m1·θ + m2 <= π, written on cos θ as insightface does (`cos θ > cos(π − m)`).
    turn = math.cos(min(max((math.pi - m2) / m1, 0.0), math.pi))
    fallback = cos_theta - m2 * math.sin(m2) - m3
    return torch.where(cos_theta.detach() > turn, angular, fallback)
