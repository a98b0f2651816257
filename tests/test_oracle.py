"""Soundness against a known answer: a linear two-class ONNX classifier.

For f(x) = 1[w.x + b > 0] the smoothed classifier's class-1 probability is exactly
Phi((w.x + b) / (sigma ||w||)), so Cohen's radius sigma Phi^-1(pA) equals the distance
|w.x + b| / ||w|| to the decision boundary: the exact robust radius of g.
"""

import numpy as np
import pytest
from scipy.stats import norm

from rs_onnx.classifier import OnnxClassifier
from rs_onnx.smoothing import SmoothedClassifier
from tests.onnx_models import linear_model, save


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    d = 20
    w = np.random.default_rng(0).normal(size=d).astype(np.float32)
    w /= np.linalg.norm(w)
    path = save(linear_model(w, 0.0, input_shape=(1, 4, 5), batch=1), tmp_path_factory.mktemp("m") / "lin.onnx")
    return OnnxClassifier(path, device="cpu"), w.reshape(1, 4, 5)


@pytest.mark.parametrize("distance", [0.1, 0.3, 0.6])
def test_radius_never_exceeds_the_distance_and_approaches_it(linear, distance):
    clf, w = linear
    sigma = 0.25
    x = (w * distance).astype(np.float32)
    radii = []
    for n in (1_000, 10_000, 100_000):
        sc = SmoothedClassifier(clf, sigma=sigma, seed=1, batch_size=10_000)
        cert = sc.certify(x, n0=100, n=n, alpha=0.001)
        assert cert.predict == 1 and cert.radius <= distance
        assert cert.radius_2class <= distance and cert.radius_tv <= cert.radius_2class
        radii.append(cert.radius)
    assert radii[0] < radii[1] < radii[2]
    # At n = 1e5 the estimate of pA = Phi(distance / sigma) is within ~3 standard errors.
    p = norm.cdf(distance / sigma)
    slack = 3.2 * np.sqrt(p * (1 - p) / 100_000) + 1e-5
    assert radii[2] >= sigma * norm.ppf(p - slack)


def test_false_certification_rate_stays_below_alpha(linear):
    """Hundreds of independent certificates of a point at distance 0.2: at most alpha exceed 0.2."""
    clf, w = linear
    sigma, alpha, distance, trials = 0.5, 0.05, 0.2, 800
    x = (w * distance).astype(np.float32)
    sc = SmoothedClassifier(clf, sigma=sigma, seed=123, batch_size=50_000)
    certs = sc.certify_many([x] * trials, n0=20, n=400, alpha=alpha)
    for name in ("radius", "radius_2class", "radius_tv"):
        wrong = np.mean([getattr(c, name) > distance for c in certs])
        assert wrong <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials), (name, wrong)
    assert np.mean([c.radius > 0 for c in certs]) > 0.5  # not vacuous
