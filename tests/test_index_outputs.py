"""Issue 14, item 3: class indices from the model are counted against a class count fixed before counting.

Before the fix the count matrix grew with the largest index seen, separately for selection and
estimation: a class seen only during selection was then read from the estimation's non-finite column,
and an index of 2**40 tried to allocate 2**40 columns.
"""

from __future__ import annotations

import numpy as np
import pytest

from rs_onnx.sampling import HostClassifier
from rs_onnx import ABSTAIN, OnnxClassifier, SmoothedClassifier
from rs_onnx.sequential import sequential_certify_many
from tests import onnx_models as om


class Scripted(HostClassifier):
    """Index outputs, no class count: the first call (selection) answers ``first``, later calls ``later``
    on their first row and -1 (no class) on the others."""

    input_shape, input_dtype, num_classes = (4,), np.dtype(np.float32), None

    def __init__(self, first=3, later=2):
        self.first, self.later, self.calls = first, later, 0

    def predict(self, x):
        self.calls += 1
        if self.calls == 1:
            return np.full(len(x), self.first, np.int64)
        out = np.full(len(x), -1, np.int64)
        out[0] = self.later
        return out


def test_class_seen_only_in_selection_is_never_read_from_the_no_class_column():
    g = SmoothedClassifier(Scripted(), sigma=0.5, seed=0, batch_size=1000)
    cert = g.certify(np.zeros(4, np.float32), n0=50, n=1000, alpha=0.001)
    assert cert.guess == 3 and cert.n_a == 0, "class 3 never appeared in estimation"
    assert cert.predict == ABSTAIN and cert.radius == 0.0
    assert cert.nonfinite == 999 and cert.counts[2] == 1


def test_sequential_class_seen_only_in_selection_is_never_certified():
    g = SmoothedClassifier(Scripted(), sigma=0.5, seed=0, batch_size=100_000)
    (cert,) = sequential_certify_many(g, [np.zeros(4, np.float32)], None, 50, 2000, 0.001, [0.25], looks=1)
    assert cert.guess == 3 and cert.n_a == 0 and cert.predict == ABSTAIN


class Fixed(HostClassifier):
    """Index outputs cycling through ``pattern`` row by row."""

    input_shape, input_dtype = (4,), np.dtype(np.float32)

    def __init__(self, pattern, num_classes=None):
        self.pattern, self.num_classes = np.asarray(pattern, np.int64), num_classes

    def predict(self, x):
        return np.resize(self.pattern, len(x))


@pytest.mark.parametrize("num_classes", [3, None])
def test_out_of_range_indices_are_their_own_outcome(num_classes):
    big = 2**40 if num_classes is None else 3
    g = SmoothedClassifier(
        Fixed([0, 0, 0, 0, 0, 1, big, -5, -1, 2**62], num_classes), sigma=0.5, seed=0, batch_size=100
    )
    cert = g.certify(np.zeros(4, np.float32), n0=10, n=1000, alpha=0.001)
    k = num_classes or 1000
    assert cert.counts.shape == (k + 1,)
    assert cert.counts[0] == 500 and cert.counts[1] == 100 and cert.counts[-1] == 400
    assert cert.counts[:-1].sum() == 600 and cert.nonfinite == 4 + 400
    p = g.predict(np.zeros(4, np.float32), 1000, 0.001)
    assert (p.count_a, p.count_b, p.nonfinite) == (500, 100, 400)


def test_index_output_model_certifies_like_its_score_model(tmp_path):
    w = np.random.default_rng(4).normal(size=(5, 16)).astype(np.float32)
    scores = OnnxClassifier(om.save(om.linear_model(w, batch="N"), tmp_path / "s.onnx"), device="cpu")
    index = OnnxClassifier(om.save(om.index_model(w), tmp_path / "i.onnx"), device="cpu")
    assert index.output_kind == "indices" and index.num_classes is None
    x = np.random.default_rng(5).random(16, dtype=np.float32)
    a, b = (
        SmoothedClassifier(c, sigma=0.3, seed=2, batch_size=500).certify(x, 50, 2000, 0.001) for c in (scores, index)
    )
    assert (a.predict, a.n_a, a.radius, a.nonfinite) == (b.predict, b.n_a, b.radius, b.nonfinite)
    assert b.counts.shape == (1001,) and a.counts.shape == (6,)
    c = SmoothedClassifier(index, sigma=0.3, seed=2, batch_size=500, num_classes=5).certify(x, 50, 2000, 0.001)
    assert c.counts.shape == (6,) and (c.predict, c.n_a, c.radius) == (a.predict, a.n_a, a.radius)
