"""The run's session sees one input shape for its whole life (issue 29), counted through a stand-in session.

On CUDA each new input shape makes the provider plan its cuDNN convolutions again (seconds on a ResNet); the
load-time trials, the batch check and the clean pass must run on other, short-lived sessions. CUDA cannot run
here, so the classifier is loaded with ``one_shape=True`` (what CUDA gets by default) on the CPU, and every
session is wrapped in :class:`CountingSession`, which records the input shapes it was run on.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from rs_onnx import OnnxClassifier, SmoothedClassifier, checks, loader, run
from rs_onnx.config import RunConfig


class CountingSession:
    """An onnxruntime session that records the shape of every input it runs on (everything else delegated)."""

    def __init__(self, session):
        self._session, self.shapes, self.runs = session, set(), 0

    def run(self, fetch, feed, *args, **kwargs):
        self.runs += 1
        self.shapes.update((name, tuple(np.shape(v))) for name, v in feed.items())
        return self._session.run(fetch, feed, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


@pytest.fixture
def counted(monkeypatch):
    """Every session built by the loader wrapped in a CountingSession; returns the list of them."""
    made: list[CountingSession] = []
    original = loader.Placement.session

    def session(self, source, cuda_graph=False):
        s = CountingSession(original(self, source, cuda_graph))
        made.append(s)
        return s

    monkeypatch.setattr(loader.Placement, "session", session)
    return made


def _certify_run(tmp_path, bundled_digits, monkeypatch, one_shape):
    model, data = bundled_digits
    monkeypatch.setattr(run, "open_classifier", functools.partial(run.open_classifier, one_shape=one_shape))
    cfg = RunConfig(
        model=model, data=data, sigma=0.25, n0=20, n=150, seed=0, batch_size=64, end=5, device="cpu"
    ).validate()
    p = run.prepare(cfg)
    meta = run.execute(p, "certify", tmp_path / f"one_shape_{one_shape}.tsv")
    return p, meta


def test_a_whole_certify_run_gives_the_runs_session_one_shape(tmp_path, bundled_digits, monkeypatch, counted):
    p, meta = _certify_run(tmp_path, bundled_digits, monkeypatch, True)
    session = p.classifier._session
    assert isinstance(session, CountingSession) and session.runs > 5
    assert {shape[0] for _, shape in session.shapes} == {64}  # the run's batch, padded; nothing else
    others = [s for s in counted if s is not session]
    assert len(others) >= 2 and any(len(s.shapes) > 1 for s in others)  # the load trials and checks ran elsewhere
    assert meta["batch_check"]["result"] == "ok" and meta["clean_accuracy"]["examples"] == 5
    assert meta["batch_check"]["seconds"] >= 0 and meta["clean_accuracy"]["seconds"] >= 0


def test_without_one_shape_the_session_sees_the_checks_shapes(tmp_path, bundled_digits, monkeypatch, counted):
    """The stand-in can tell: on CPU (one_shape off) the same run changes the session's shape many times."""
    p, _ = _certify_run(tmp_path, bundled_digits, monkeypatch, False)
    assert len({shape[0] for _, shape in p.classifier._session.shapes}) > 2


def test_results_are_the_same_with_and_without_one_shape(tmp_path, bundled_digits, monkeypatch):
    rows = []
    for one in (True, False):
        with monkeypatch.context() as m:
            _, meta = _certify_run(tmp_path, bundled_digits, m, one)
        lines = (tmp_path / f"one_shape_{one}.tsv").read_text().splitlines()
        t = lines[0].split("\t").index("time")
        rows.append([line.split("\t")[:t] for line in lines])
    assert rows[0] == rows[1]


def test_scratch_is_a_fresh_session_and_leaves_the_classifier(bundled_digits, counted):
    clf = OnnxClassifier(bundled_digits[0], device="cpu", one_shape=True)
    main = clf._session
    copy = clf.scratch()
    assert copy._session is not main and not copy.prefers_fixed_batch and clf.prefers_fixed_batch
    x = np.random.default_rng(0).random((7, *clf.input_shape), dtype=np.float32)
    assert np.array_equal(copy.predict(x), np.concatenate([copy.predict(x[i : i + 1]) for i in range(7)]))
    assert main.runs == 0  # loaded with one_shape: the run's session has not run at all yet


def test_check_sizes_are_a_bounded_share_of_a_short_run():
    assert checks.check_sizes(1000, 10**6) == (501, 32)  # a long run: the full check
    assert checks.check_sizes(1000) == (501, 32)
    for b, total in ((111, 600), (64, 100), (500, 1000), (3, 10)):
        other, m = checks.check_sizes(b, total)
        assert 2 <= other <= b // 2 + 1 and min(b, checks.MIN_SINGLE_ROWS) <= m <= min(b, 32)
        assert other + m <= max(checks.CHECK_SHARE * total - b, 0) + 2 + checks.MIN_SINGLE_ROWS
    assert checks.check_sizes(2, 10) == (1, 2) and checks.check_sizes(111, 600) == (19, 19)


def test_the_short_run_check_costs_fewer_model_rows(bundled_digits, counted):
    """ResNet-18's quick try spent most of its time in checks: the check's rows now scale with the run."""
    clf = OnnxClassifier(bundled_digits[0], device="cpu")
    g = SmoothedClassifier(clf, sigma=0.25, seed=0, batch_size=100)
    x = np.full((28, 28), 0.5, np.float32)
    rows_before = sum(s.runs for s in counted)
    rec = checks.check_batch_equivalence(g, x, total=240)
    runs = sum(s.runs for s in counted) - rows_before
    assert rec["batch_sizes"] == [100, 2] and rec["rows_one_by_one"] == 4 and rec["result"] == "ok"
    assert runs == 1 + 1 + 4  # one model run per batch (classes from the scores) and per one-by-one row


def test_one_sample_per_run_is_never_padded(bundled_digits):
    """A per-sample fallback runs one row at a time (one shape already): padding the last batch would only add runs."""
    clf = OnnxClassifier(bundled_digits[0], device="cpu", one_shape=True)
    assert clf.prefers_fixed_batch and not clf.one_by_one().prefers_fixed_batch
