"""Issue 14, items 4 and 6: batch equivalence at the batch size used, and the clean-accuracy check.

``mixes_above_8`` is declared with a dynamic batch and passes the load check (8 random inputs, one
batch of 8), but above batch 8 it subtracts 4x the batch's mean scores from every row. Before the
fix its certificates depended on --batch-size.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rs_onnx.sampling import HostClassifier
from rs_onnx import OnnxClassifier, SmoothedClassifier, run
from rs_onnx.checks import check_batch_equivalence, clean_accuracy, near_chance
from rs_onnx.cli import main
from rs_onnx.config import RunConfig
from rs_onnx.distributed import Worker
from rs_onnx.errors import ModelError
from rs_onnx.sequential import sequential_certify_many
from tests import onnx_models as om

W = np.random.default_rng(7).normal(size=(3, 16)).astype(np.float32)
N = 5


def mixes_above_8(w: np.ndarray) -> onnx.ModelProto:
    """scores = x @ W.T - 4 * [batch > 8] * mean over the batch of (x @ W.T); input x [N, 1, 4, 4]."""
    k = w.shape[0]
    nodes = [
        helper.make_node("Flatten", ["x"], ["xf"], axis=1),
        helper.make_node("Gemm", ["xf", "W"], ["s"], transB=1),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Greater", ["n", "eight"], ["big"]),
        helper.make_node("Cast", ["big"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["s"], ["m"], axes=[0], keepdims=1),
        helper.make_node("Mul", ["m", "flag"], ["mf"]),
        helper.make_node("Mul", ["mf", "four"], ["m4"]),
        helper.make_node("Sub", ["s", "m4"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(8, np.int64), "eight"),
        numpy_helper.from_array(np.array(4.0, np.float32), "four"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])
    model = helper.make_model(
        helper.make_graph(nodes, "mix8", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("checks")
    om.save(mixes_above_8(W), tmp / "mix.onnx")
    om.save(om.linear_model(W, input_shape=(1, 4, 4), batch="N"), tmp / "lin.onnx")
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, size=(N, 4, 4), dtype=np.uint8)
    labels = (images.reshape(N, -1) / 255 @ W.T).argmax(1)
    np.savez(tmp / "d.npz", images=images, labels=labels)
    return tmp


def test_the_mixing_model_passes_the_load_check(files):
    clf = OnnxClassifier(files / "mix.onnx", device="cpu")
    assert clf.batch_mode == "dynamic"
    x = np.random.default_rng(0).random((20, 1, 4, 4), dtype=np.float32)
    assert (clf.predict(x[:8]) == np.concatenate([clf.predict(x[i : i + 1]) for i in range(8)])).all()
    assert (clf.predict(x) != np.concatenate([clf.predict(x[i : i + 1]) for i in range(20)])).any()


def _rows(files, tmp_path, batch_size, model="mix.onnx"):
    cfg = RunConfig(
        model=str(files / model), data=str(files / "d.npz"), sigma=0.3, n0=20, n=200, seed=1, batch_size=batch_size
    ).validate()
    p = run.prepare(cfg)
    out = tmp_path / f"b{batch_size}.tsv"
    meta = run.execute(p, "certify", out)
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    t = lines[0].index("time")
    return p, meta, [line[:t] + line[t + 1 :] for line in lines]


def test_results_do_not_depend_on_the_batch_size(files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rs_onnx"):
        p, meta, big = _rows(files, tmp_path, 100)
    assert p.classifier.batch_mode == "per-sample"
    assert meta["batch_check"]["result"] == "per-sample fallback" and meta["batch_check"]["batch_sizes"][0] == 100
    assert meta["model"]["signature"]["batch_mode"] == "per-sample"
    assert any("falling back to one sample per run" in r.getMessage() for r in caplog.records)
    _, small_meta, small = _rows(files, tmp_path, 5)
    assert small_meta["batch_check"]["result"] == "ok"
    assert big == small


def test_a_clean_model_keeps_its_batches(files, tmp_path):
    p, meta, _ = _rows(files, tmp_path, 100, "lin.onnx")
    assert p.classifier.batch_mode == "dynamic" and meta["batch_check"]["result"] == "ok"
    assert meta["batch_check"]["batch_sizes"] == [100, 51] and meta["batch_check"]["rows_one_by_one"] == 32


def test_the_worker_follows_the_drivers_fallback(files):
    cfg = RunConfig(
        model=str(files / "mix.onnx"), data=str(files / "d.npz"), sigma=0.3, n0=20, n=200, seed=1, batch_size=100
    ).validate()
    p = run.prepare(cfg)
    w = Worker(
        p.cfg.to_dict(),
        p.classifier.sha256,
        p.smoothed.sigma,
        p.smoothed.entropy,
        "cpu",
        1,
        None,
        p.classifier.batch_mode,
    )
    w.ready(None)
    assert w.classifier.signature() == p.classifier.signature()
    got, _ = w.answers(None, "certify", [0, 1], p.data.images[[0, 1]])
    want = p.smoothed.certify_many([p.data.image(i) for i in (0, 1)], 20, 200, 0.001, [0, 1])
    assert [(a.predict, a.n_a, a.radius) for a in got] == [(a.predict, a.n_a, a.radius) for a in want]


class MixingStub(HostClassifier):
    """A Python classifier without batch modes (cannot fall back): mixes rows above batch 8."""

    input_shape, input_dtype, num_classes = (16,), np.dtype(np.float32), 3

    def predict(self, x):
        s = x.reshape(len(x), -1) @ W.T
        if len(x) > 8:
            s = s - 4 * s.mean(axis=0)
        return s.argmax(1)


def test_a_model_that_cannot_fall_back_is_refused():
    g = SmoothedClassifier(MixingStub(), sigma=0.3, seed=0, batch_size=64)
    with pytest.raises(ModelError, match="a batch of 64 gives"):
        check_batch_equivalence(g, np.full(16, 0.5, np.float32))
    assert check_batch_equivalence(g, np.full(16, 0.5, np.float32), 8)["result"] == "ok"


def test_clean_accuracy_and_the_near_chance_rule():
    assert not near_chance({"examples": 100, "correct": 60, "accuracy": 0.6, "chance": 0.1})
    assert near_chance({"examples": 100, "correct": 15, "accuracy": 0.15, "chance": 0.1})
    assert not near_chance({"examples": 5, "correct": 0, "accuracy": 0.0, "chance": 0.1})  # too few to say
    assert not near_chance(None)
    g = SmoothedClassifier(MixingStub(), sigma=0.3, seed=0, batch_size=8)
    xs = list(np.random.default_rng(3).random((6, 16), dtype=np.float32))
    truth = [int((x @ W.T).argmax()) for x in xs]
    rec = clean_accuracy(g.classifier, g, xs[:4], truth[:4])
    assert rec == {"examples": 4, "correct": 4, "accuracy": 1.0, "chance": 1 / 3}
    wrong = [(t + 1) % 3 for t in truth]
    assert clean_accuracy(g.classifier, g, xs, wrong[:3] + [-1] * 3)["correct"] == 0
    assert clean_accuracy(g.classifier, g, xs, [-1] * 6) is None


def test_wrong_preprocessing_warns_and_is_recorded(files, tmp_path, capsys):
    """The bundled digits model read with a wrong mean/std: near chance, one warning line naming the causes."""
    out = tmp_path / "c.tsv"
    base = [
        "certify",
        run.bundled("digits_cnn.onnx"),
        run.bundled("digits_eval.npz"),
        "--sigma",
        "0.25",
        "--n0",
        "10",
        "--n",
        "20",
        "--seed",
        "0",
        "--end",
        "40",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as e:
        main(base + ["--mean", "0.9", "--std", "0.05"])
    assert e.value.code == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "clean examples" in line]
    assert len(warned) == 1 and "mean/std" in warned[0] and "layout" in warned[0] and "scale" in warned[0]
    meta = json.loads((tmp_path / "c.tsv.meta.json").read_text())
    acc = meta["clean_accuracy"]
    assert acc["examples"] == 40 and acc["chance"] == 0.1 and acc["accuracy"] <= 0.325
    assert "clean accuracy of the base classifier" in captured.out + captured.err
    out.unlink()
    with pytest.raises(SystemExit):
        main(base)
    captured = capsys.readouterr()
    assert "clean examples" not in captured.err
    acc = json.loads((tmp_path / "c.tsv.meta.json").read_text())["clean_accuracy"]
    assert acc["accuracy"] > 0.9 and acc["correct"] == round(acc["accuracy"] * 40)


def test_the_python_api_checks_batches_too(files):
    """SmoothedClassifier on an OnnxClassifier: the first certify/predict checks its batch size once."""
    x = np.full((1, 4, 4), 0.5, np.float32)
    results = []
    for batch in (100, 5):
        clf = OnnxClassifier(files / "mix.onnx", device="cpu")
        g = SmoothedClassifier(clf, sigma=0.3, seed=0, batch_size=batch)
        cert = g.certify(x, 20, 300, 0.01)
        results.append((cert.predict, cert.n_a, cert.radius, g.predict(x, 300, 0.01).count_a))
        assert g.batch_check["batch_sizes"][0] == batch
        assert g.classifier.batch_mode == ("per-sample" if batch > 8 else "dynamic")
        assert clf.batch_mode == "dynamic"  # the caller's classifier object is never changed
    assert results[0] == results[1]
    seq_clf = OnnxClassifier(files / "mix.onnx", device="cpu")
    g = SmoothedClassifier(seq_clf, sigma=0.3, seed=0, batch_size=64)
    sequential_certify_many(g, [x], None, 20, 500, 0.01, [0.25])
    assert g.classifier.batch_mode == "per-sample" and g.batch_check["result"] == "per-sample fallback"
    assert seq_clf.batch_mode == "dynamic"


class _OutOfMemoryAbove:
    """An OnnxClassifier that raises onnxruntime's out-of-memory message above ``rows`` inputs (any model run:
    classes or scores)."""

    def __init__(self, clf, rows):
        self._clf, self._rows = clf, rows

    def _check(self, x):
        if len(x) > self._rows:
            raise RuntimeError(f"Failed to allocate memory for requested buffer of size {len(x) * 64}")

    def predict(self, x):
        self._check(x)
        return self._clf.predict(x)

    def scores(self, x):
        self._check(x)
        return self._clf.scores(x)

    def __getattr__(self, name):
        return getattr(self._clf, name)


def test_out_of_memory_halves_the_checked_batch_like_the_sampler(files):
    clf = _OutOfMemoryAbove(OnnxClassifier(files / "lin.onnx", device="cpu"), 40)
    g = SmoothedClassifier(clf, sigma=0.3, seed=0, batch_size=100)
    rec = check_batch_equivalence(g, np.full((1, 4, 4), 0.5, np.float32))
    assert rec["result"] == "ok" and rec["batch_sizes"] == [25, 13] and rec["out_of_memory_at"] == 50
    plain = _OutOfMemoryAbove(OnnxClassifier(files / "lin.onnx", device="cpu"), 0)  # fails even one by one
    with pytest.raises(RuntimeError, match="allocate"):
        check_batch_equivalence(SmoothedClassifier(plain, sigma=0.3, seed=0, batch_size=4), np.zeros((1, 4, 4)))
