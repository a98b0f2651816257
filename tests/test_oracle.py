"""Soundness against a known answer: a linear two-class ONNX classifier.

For f(x) = 1[w.x + b > 0] the smoothed classifier's class-1 probability is exactly
Phi((w.x + b) / (sigma ||w||)), so Cohen's radius sigma Phi^-1(pA) equals the distance
|w.x + b| / ||w|| to the decision boundary: the exact robust radius of g.
"""

import numpy as np
import pytest
from scipy.stats import beta, binom, norm

from rs_onnx.classifier import OnnxClassifier
from rs_onnx.smoothing import SmoothedClassifier
from tests.onnx_models import linear_model, save


@pytest.fixture(scope="module")
def halfspace(tmp_path_factory):
    """(classifier, w [1, 4, 5]): f(x) = 1[w.x > 0] with ||w|| = 1, so the distance to its boundary is w.x."""
    d = 20
    w = np.random.default_rng(0).normal(size=d).astype(np.float32)
    w /= np.linalg.norm(w)
    path = save(linear_model(w, 0.0, input_shape=(1, 4, 5), batch=1), tmp_path_factory.mktemp("m") / "lin.onnx")
    return OnnxClassifier(path, device="cpu"), w.reshape(1, 4, 5)


def _radius_at_count(k: int, n: int, alpha: float, sigma: float) -> float:
    """sigma Phi^-1(CP_lower(k, n, alpha)) from scipy directly, shrunk by 1e-9 (rs_onnx rounds down by 1e-12)."""
    p = beta.ppf(alpha, k, n - k + 1) if k > 0 else 0.0
    return 0.0 if p <= 0.5 else sigma * float(norm.ppf(p)) * (1 - 1e-9)


@pytest.mark.parametrize("distance", [0.1, 0.3, 0.6])
def test_radius_never_exceeds_the_distance_and_approaches_it(halfspace, distance):
    """Sound (<= distance) and tight: at each n the radius is at least the one the count's 1e-7 quantile
    gives (exact binomial tail), so a sound engine fails with probability <= 3e-7 per distance (plus
    P(wrong selection) < 1e-20 with n0 = 1000); that bound approaches the distance as n grows."""
    clf, w = halfspace
    sigma, alpha = 0.25, 0.001
    x = (w * distance).astype(np.float32)
    p = norm.cdf(distance / sigma)  # the exact pA of class 1
    floors = []
    for n in (1_000, 10_000, 100_000):
        sc = SmoothedClassifier(clf, sigma=sigma, seed=1, batch_size=10_000)
        cert = sc.certify(x, n0=1000, n=n, alpha=alpha)
        assert cert.predict == 1 and cert.radius <= distance
        assert cert.radius_2class <= distance and cert.radius_tv <= cert.radius_2class
        floor = _radius_at_count(int(binom.ppf(1e-7, n, p)), n, alpha, sigma)
        assert cert.radius >= floor, (n, cert.radius, floor)
        floors.append(floor)
    # The guaranteed floor grows with n and ends within 10% of the exact radius (a deterministic check).
    assert floors[0] < floors[1] < floors[2] and floors[2] >= 0.9 * distance


def test_false_certification_rate_stays_below_alpha(halfspace):
    """Hundreds of independent certificates of a point at distance 0.2: at most alpha exceed 0.2."""
    clf, w = halfspace
    sigma, alpha, distance, trials = 0.5, 0.05, 0.2, 800
    x = (w * distance).astype(np.float32)
    sc = SmoothedClassifier(clf, sigma=sigma, seed=123, batch_size=50_000)
    certs = sc.certify_many([x] * trials, n0=20, n=400, alpha=alpha)
    limit = binom.isf(1e-7, trials, alpha)  # each radius is false w.p. <= alpha: P(sound engine fails) <= 3e-7
    for name in ("radius", "radius_2class", "radius_tv"):
        wrong = sum(getattr(c, name) > distance for c in certs)
        assert wrong <= limit, (name, wrong, limit)
    assert np.mean([c.radius > 0 for c in certs]) > 0.5  # not vacuous
