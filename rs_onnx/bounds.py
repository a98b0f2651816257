"""Certificates beyond Cohen et al.'s: total variation, two-class, other noises and norms.

Pure float64 functions, vectorised over numpy arrays where natural. Units: ``sigma`` (Gaussian standard
deviation) and ``lambda``/``scale`` (uniform half-width, Laplace scale) are in [0,1]-pixel units, the
units of the input x before any preprocessing; every radius is returned in the same units.

The Clopper-Pearson bounds, the Cohen radius and the rounding rule come from :mod:`rs_onnx.stats`: every
bound and radius is rounded towards the safe side (radii down by a relative 1e-12), so floating-point
error can never enlarge a certificate.

References
----------
Cohen, Rosenfeld & Kolter (2019), Certified adversarial robustness via randomized smoothing.
Yang et al. (2020), Randomized smoothing of all shapes and sizes.
Teng, Lee & Yuan (2020), l1 adversarial robustness certificates: a randomized smoothing approach.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm as _gauss  # `norm` is a parameter name below

from .errors import ConfigError, DataError
from .inputs import check_alpha
from .stats import cohen_radii, cp_lower, cp_upper, round_down

__all__ = [
    "tv_gaussian",
    "tv_radius",
    "two_class_radius",
    "two_class_certificate",
    "best_radius",
    "best_of",
    "two_class_from_top",
    "radius",
    "uniform_linf_radius",
    "norm_radii",
    "NOISES",
    "NORMS",
]

NOISES = ("gaussian", "uniform", "laplace")
NORMS = ("l2", "l1", "linf")

# --------------------------------------------------------------------------------------------- helpers


def _out(x: np.ndarray):
    """A 0-d result as a Python float, anything else as a float64 array."""
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


def _probability(p, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if np.any(np.isnan(p)) or np.any(p < 0.0) or np.any(p > 1.0):
        bad = p[np.isnan(p) | (p < 0.0) | (p > 1.0)].ravel()[0]
        raise DataError(f"{name}={bad}: expected a probability in [0, 1]")
    return p


def _positive(x: float, name: str) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={x!r}: expected a positive number") from None
    if not np.isfinite(x) or x <= 0.0:
        raise ConfigError(f"{name}={x}: expected a positive finite number")
    return x


# ------------------------------------------------------------------------------- total variation (l2)


def tv_gaussian(eps, sigma: float):
    """Total-variation distance between N(x, sigma^2 I) and N(x', sigma^2 I) with ||x - x'||_2 = eps.

    TV(eps) = 2 Phi(eps / (2 sigma)) - 1. Every class probability of the Gaussian-smoothed classifier
    moves by at most TV(eps) between x and x'. ``eps`` and ``sigma`` in [0,1]-pixel units.
    """
    sigma = _positive(sigma, "sigma")
    eps = np.asarray(eps, dtype=np.float64)
    return _out(2.0 * _gauss.cdf(eps / (2.0 * sigma)) - 1.0)


def tv_radius(p_a_lower, p_b_upper, sigma: float):
    """Certified l2 radius from the total-variation bound (Gaussian noise).

    Within ||x - x'||_2 <= eps the top class can lose at most TV(eps) and any other class can gain at
    most TV(eps) (more precisely, the loss of A plus the gain of B is at most ||P - Q||_1 = 2 TV), so
    the top class stays on top while ``p_a_lower - p_b_upper > 2 TV(eps)``. The largest such eps is

        eps = 2 sigma Phi^-1((1 + (p_a_lower - p_b_upper) / 2) / 2),

    and 0 when the gap is <= 0. Never larger than :func:`two_class_radius` with the same inputs (the
    Gaussian CDF moves by at most TV over a window of width eps / sigma), equal to it to first order as
    both probabilities approach 1/2. Provided for comparison; the two-class radius dominates it.

    Parameters
    ----------
    p_a_lower, p_b_upper : float or array
        Lower bound on the top class's probability, upper bound on every other class's probability.
    sigma : float
        Gaussian noise standard deviation in [0,1]-pixel units; the radius is in the same units.
    """
    sigma = _positive(sigma, "sigma")
    pa = _probability(p_a_lower, "p_a_lower")
    pb = _probability(p_b_upper, "p_b_upper")
    gap = pa - pb
    r = 2.0 * sigma * _gauss.ppf(0.5 + np.maximum(gap, 0.0) / 4.0)
    return _out(np.where(gap > 0.0, round_down(r), 0.0))


# ------------------------------------------------------------------------------------- two-class (l2)


def two_class_radius(p_a_lower, p_b_upper, sigma: float):
    """Cohen et al.'s Theorem 1: l2 radius sigma/2 (Phi^-1(p_a_lower) - Phi^-1(p_b_upper)).

    Valid when ``p_b_upper`` bounds EVERY class other than the top one. 0 when p_a_lower <= p_b_upper
    (no certificate: abstain). With p_b_upper = 1 - p_a_lower it is Cohen's sigma Phi^-1(p_a_lower).
    ``sigma`` and the radius in [0,1]-pixel units.
    """
    sigma = _positive(sigma, "sigma")
    pa = _probability(p_a_lower, "p_a_lower")
    pb = _probability(p_b_upper, "p_b_upper")
    with np.errstate(invalid="ignore"):  # inf - inf where pa = 1 and pb = 0 cannot both hold for CP
        r = 0.5 * sigma * (_gauss.ppf(pa) - _gauss.ppf(pb))
    return _out(np.where(pa > pb, round_down(r), 0.0))


def _check_counts(counts, top) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(counts)
    if c.ndim < 1 or c.shape[-1] < 2:
        raise DataError(f"counts of shape {c.shape}: expected (..., K) with K >= 2 classes")
    if not np.issubdtype(c.dtype, np.integer):
        if not np.issubdtype(c.dtype, np.floating) or np.any(c != np.round(c)):
            raise DataError(f"counts of dtype {c.dtype}: expected integer counts")
        c = c.astype(np.int64)
    c = c.astype(np.int64)
    if np.any(c < 0):
        raise DataError(f"counts with minimum {c.min()}: expected non-negative counts")
    if np.any(c.sum(axis=-1) < 1):
        raise DataError("counts summing to 0: expected at least one certification sample")
    t = np.asarray(top)
    if not np.issubdtype(t.dtype, np.integer):
        raise DataError(f"top of dtype {t.dtype}: expected an integer class index")
    if np.any(t < 0) or np.any(t >= c.shape[-1]):
        raise DataError(f"top={t.ravel()[0] if t.size == 1 else t}: expected class indices in [0, {c.shape[-1]})")
    try:
        t = np.broadcast_to(t, c.shape[:-1]).astype(np.int64)
    except ValueError:
        raise DataError(f"top of shape {t.shape}: expected a shape broadcastable to {c.shape[:-1]}") from None
    return c, t


def two_class_certificate(counts, top, alpha: float, sigma: float, *, alpha_split: float = 0.5, pb_bound: str = "max"):
    """Two-class certificate (Cohen et al.'s Theorem 1 with an estimated runner-up bound).

    Parameters
    ----------
    counts : int array, shape (K,) or (..., K)
        Per-class counts of the n = counts.sum(-1) CERTIFICATION samples.
    top : int or int array broadcastable to counts.shape[:-1]
        The class chosen from SEPARATE selection samples (it must not depend on ``counts``).
    alpha : float
        The whole certificate holds with probability at least 1 - alpha.
    sigma : float
        Gaussian noise standard deviation in [0,1]-pixel units; the radius is in the same units.
    alpha_split : float
        Fraction of alpha spent on p_a_lower; the rest, alpha_b = (1 - alpha_split) alpha, on p_b_upper.
    pb_bound : {"max", "bonferroni"}
        How p_b_upper covers all other classes at once (see Notes). "max" is sound and always at least
        as tight; "bonferroni" is kept for comparison.

    Returns
    -------
    (p_a_lower, p_b_upper, radius) : floats (or arrays for batched counts); radius 0 means abstain.

    Notes
    -----
    Level. p_a_lower is the one-sided Clopper-Pearson lower bound at level alpha_a = alpha_split alpha on
    counts[top]; it fails with probability <= alpha_a because ``top`` is fixed before ``counts`` is drawn.
    p_b_upper must bound max_{j != top} p_j. Both hold together with probability >= 1 - alpha_a - alpha_b
    = 1 - alpha (union bound), and the radius is monotone in both, so it is valid at level alpha.

    Bounding every other class. Let U_a(k) be the one-sided Clopper-Pearson upper bound at level a; it is
    increasing in k, so max_j U_a(k_j) = U_a(max_j k_j).

    * "bonferroni": U at level alpha_b / (K - 1) on each of the K - 1 other classes, p_b_upper = the max.
      By the union bound, all K - 1 bounds hold at once with probability >= 1 - alpha_b.
    * "max" (default): U at level alpha_b on the largest other count. Looking at the counts to pick the
      runner-up is harmless HERE, for an upper bound on the maximum: let B* be the other class with the
      largest TRUE probability (fixed, unknown). Its single bound U(k_B*) holds with probability
      >= 1 - alpha_b, and on that event U(max_j k_j) >= U(k_B*) >= p_B* >= p_j for every j != top. So no
      union bound is needed. (The selection effect only bites LOWER bounds on a selected class, which is
      why ``top`` needs separate selection samples: L(max_j k_j) >= L(k_A*) is the wrong direction.)
      A per-class bound that is NOT monotone in the count, or one applied to p_Jhat for a class picked by
      another rule, would not inherit this argument.

    Both are then also capped by 1 - p_a_lower: on the event p_top >= p_a_lower every other class has
    p_j <= 1 - p_top <= 1 - p_a_lower, so the cap costs no extra alpha. With the cap the radius is never
    smaller than Cohen's sigma Phi^-1(p_a_lower) at the same alpha_a.
    """
    alpha = check_alpha(alpha)
    sigma = _positive(sigma, "sigma")
    if not 0.0 < float(alpha_split) < 1.0:
        raise ConfigError(f"alpha_split={alpha_split}: expected a number in (0, 1)")
    if pb_bound not in ("max", "bonferroni"):
        raise ConfigError(f"pb_bound={pb_bound!r}: expected 'max' or 'bonferroni'")
    c, t = _check_counts(counts, top)
    K = c.shape[-1]  # noqa: N806 - the number of classes, as in the docstring
    n = c.sum(axis=-1)
    k_top = np.take_along_axis(c, t[..., None], axis=-1)[..., 0]
    others = c.copy()
    np.put_along_axis(others, t[..., None], -1, axis=-1)
    k_other = others.max(axis=-1)
    return two_class_from_top(
        k_top, k_other, n, alpha, sigma, alpha_split=alpha_split, rivals=1 if pb_bound == "max" else K - 1
    )


def two_class_from_top(k_top, k_other, n, alpha: float, sigma: float, *, alpha_split: float = 0.5, rivals: int = 1):
    """:func:`two_class_certificate` from the count of the top class ``k_top`` and the largest other count
    ``k_other`` among ``n`` certification samples (ints or int arrays): (p_a_lower, p_b_upper, radius).

    p_a_lower at level alpha_split alpha; p_b_upper at the rest divided by ``rivals`` (1: the "max" bound;
    K - 1: Bonferroni), capped by 1 - p_a_lower. The one computation behind the two-class columns, also used
    by ``rs-onnx verify`` (which has only these counts)."""
    alpha_a = float(alpha_split) * alpha
    alpha_b = alpha - alpha_a
    p_a = cp_lower(k_top, n, alpha_a)
    p_b = np.minimum(cp_upper(k_other, n, alpha_b / rivals), 1.0 - p_a)
    r = two_class_radius(p_a, p_b, sigma)
    return _out(p_a), _out(p_b), _out(r)


def best_radius(counts, top, alpha: float, sigma: float, *, alpha_split: float = 0.5):
    """The larger of Cohen's and the two-class l2 radius, valid at level alpha as a whole.

    Taking the max of two certificates each computed at level alpha would only be valid at level 2 alpha.
    Here both use the SAME events: p_a_lower at alpha_a = alpha_split alpha (Cohen's radius
    sigma Phi^-1(p_a_lower) fails only when p_a_lower fails) and p_b_upper at alpha - alpha_a. Both
    radii hold on the intersection of those events, which has probability >= 1 - alpha, so their max
    does too. Because :func:`two_class_certificate` caps p_b_upper by 1 - p_a_lower, its radius already
    dominates Cohen's at alpha_a; the max is taken anyway for clarity.

    Against Cohen's radius at the full alpha this trades a slightly smaller p_a_lower for a gain when the
    mass not on the top class is spread over several classes. ``sigma`` and the radius in [0,1]-pixel
    units; returns a float (or an array for batched counts), 0 meaning abstain.
    """
    p_a, _, r_two = two_class_certificate(counts, top, alpha, sigma, alpha_split=alpha_split)
    return best_of(p_a, r_two, sigma)


def best_of(p_a_lower, radius_2class, sigma: float):
    """The ``bound="best"`` radius from its parts: max(Cohen's sigma Phi^-1(p_a_lower), the two-class radius),
    both from the same split-level events (see :func:`best_radius`)."""
    r_cohen = cohen_radii(np.asarray(p_a_lower), sigma)
    return _out(np.maximum(r_cohen, radius_2class))


# ------------------------------------------------------------------------------ other noises and norms


def radius(p_a_lower, noise: str, scale: float, norm: str = "l2", dim: int | None = None):
    """Certified radius of a smoothed classifier from a lower bound on the top-class probability.

    Native certificates (binary form: the top class stays on top while p_A stays above 1/2):

    ========  =====================  ==============================  ===============================
    noise     scale                  native norm, radius             source
    ========  =====================  ==============================  ===============================
    gaussian  sigma (std)            l2: sigma Phi^-1(p)             Cohen et al. 2019
    uniform   lambda, U[-lambda,     l1: 2 lambda (p - 1/2)          Yang et al. 2020 (lambda =
              lambda]^d half-width                                   sqrt(3) sigma in their table)
    laplace   lambda, density        l1: -lambda log(2 (1 - p))      Teng et al. 2020
              exp(-|x|/lambda)/2l
    ========  =====================  ==============================  ===============================

    Conversions between norms (sound, not tight), for inputs of ``dim`` dimensions:

    * from an l2 radius R: l1 radius R (||v||_2 <= ||v||_1, so the l1 ball of radius R lies in the l2
      ball); linf radius R / sqrt(dim) (||v||_2 <= sqrt(dim) ||v||_inf).
    * from an l1 radius R: l2 radius R / sqrt(dim) (||v||_1 <= sqrt(dim) ||v||_2); linf radius R / dim
      (||v||_1 <= dim ||v||_inf).

    Parameters
    ----------
    p_a_lower : float or array
        Lower confidence bound on the probability of the top class (0 radius when <= 1/2).
    noise : {"gaussian", "uniform", "laplace"}
    scale : float
        sigma or lambda in [0,1]-pixel units; the radius is in the same units.
    norm : {"l2", "l1", "linf"}
        The norm of the certified ball.
    dim : int, optional
        Input dimension, required only for the conversions that use it.
    """
    if noise not in NOISES:
        raise ConfigError(f"noise={noise!r}: expected one of {', '.join(NOISES)}")
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r}: expected one of {', '.join(NORMS)}")
    scale = _positive(scale, "scale")
    p = _probability(p_a_lower, "p_a_lower")
    if (noise, norm) == ("uniform", "linf"):
        return uniform_linf_radius(p, scale, _dim(dim, noise, norm))
    above = p > 0.5
    q = np.where(above, p, 0.75)  # placeholder inside the valid domain; masked below
    if noise == "gaussian":
        native, r = "l2", scale * _gauss.ppf(q)
    elif noise == "uniform":
        native, r = "l1", 2.0 * scale * (q - 0.5)
    else:
        with np.errstate(divide="ignore"):  # p = 1 gives an infinite radius
            native, r = "l1", -scale * np.log(2.0 * (1.0 - q))
    r = np.where(above, r, 0.0)

    divisor = 1.0
    if norm != native and not (native == "l2" and norm == "l1"):
        d = float(_dim(dim, noise, norm))
        divisor = d if (native, norm) == ("l1", "linf") else np.sqrt(d)
    return _out(round_down(r / divisor))


def _dim(dim, noise: str, norm: str) -> int:
    if dim is None:
        raise ConfigError(f"{noise} noise with norm={norm}: expected dim (the input dimension) to convert its radius")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError(f"dim={dim!r}: expected a positive integer")
    return int(dim)


def uniform_linf_radius(p_a_lower, lam: float, dim: int):
    """Direct l-infinity radius for uniform noise U[-lam, lam]^dim (Yang et al. 2020): 2 lam (1 - (3/2 - p)^(1/dim)).

    Proof (total variation). Shifting the cube by v moves at most TV = 1 - prod_i (1 - |v_i| / (2 lam))
    of probability, and ||v||_inf <= eps gives TV <= 1 - (1 - eps / (2 lam))^dim. The top class keeps
    probability >= p - TV > 1/2 while (1 - eps / (2 lam))^dim > 3/2 - p, i.e. for eps below the formula.
    It is never smaller than the l1 conversion 2 lam (p - 1/2) / dim (concavity of t^(1/dim)), and
    equals it for dim = 1; the larger of the two is returned. ``lam`` and the radius in [0,1]-pixel
    units; 0 when p <= 1/2.
    """
    lam = _positive(lam, "lambda")
    d = float(_dim(dim, "uniform", "linf"))
    p = _probability(p_a_lower, "p_a_lower")
    above = p > 0.5
    q = np.where(above, p, 0.75)
    direct = -2.0 * lam * np.expm1(np.log1p(-(q - 0.5)) / d)
    convert = 2.0 * lam * (q - 0.5) / d
    return _out(np.where(above, round_down(np.maximum(direct, convert)), 0.0))


def norm_radii(p_a_lower: float, native_radius: float, noise: str, scale: float, dim: int) -> dict[str, float]:
    """Certified radii in l1, l2 and linf of one certificate, all from the same event (no extra alpha).

    ``native_radius`` is the certificate's radius in its noise's native norm (l2 for gaussian, possibly a
    two-class or best radius; l1 for uniform and laplace), valid whenever p_a_lower is; the other norms
    follow by norm conversion (see :func:`radius`), and uniform's linf also by
    :func:`uniform_linf_radius` from ``p_a_lower``, whichever is larger. 0 everywhere when abstaining.
    """
    if noise not in NOISES:
        raise ConfigError(f"noise={noise!r}: expected one of {', '.join(NOISES)}")
    d = float(_dim(dim, noise, "linf"))
    r = float(native_radius)
    if not r > 0.0:
        return {"l1": 0.0, "l2": 0.0, "linf": 0.0}
    if noise == "gaussian":
        out = {"l1": r, "l2": r, "linf": r / np.sqrt(d)}
    else:
        out = {"l1": r, "l2": r / np.sqrt(d), "linf": r / d}
        if noise == "uniform":
            out["linf"] = max(out["linf"], float(uniform_linf_radius(p_a_lower, scale, int(d))))
    native = NATIVE_NORM[noise]
    return {k: float(v) if k == native else float(round_down(np.asarray(v, np.float64))) for k, v in out.items()}


NATIVE_NORM = {"gaussian": "l2", "uniform": "l1", "laplace": "l1"}
"""The norm in which each noise's certificate is computed (the ``radius`` column's norm)."""
