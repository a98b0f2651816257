"""Models and data as their ecosystems hand them over (issue 26, parts 3-5): classical ML output pairs, grey
arrays for 3-channel models, numeric CSVs as features tables, and the smaller notes (one class for every
example, chance unknown for index outputs, a float16 model's precision)."""

import gzip
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from rs_onnx.data import load_data
from rs_onnx.errors import DataError
from tests import onnx_models as om
from tests.conftest import invoke_cli as run

RNG = np.random.default_rng(3)
RUN = ["--sigma", "0.1", "--n0", "20", "--n", "60", "--seed", "0", "--batch-size", "64"]


def _ort_classes(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = s.run(None, {s.get_inputs()[0].name: x})
    return np.asarray(out[0]).reshape(len(x), -1).argmax(1) if out[0].ndim > 1 else np.asarray(out[0])


# ------------------------------------------------------------------ part 3: label + probabilities
def test_cli_certifies_a_label_probabilities_pair_without_output_name(tmp_path):
    w = RNG.normal(size=(3, 6)).astype(np.float32)
    model = om.save(om.sklearn_like_model(w, np.zeros(3, np.float32), zipmap=False), tmp_path / "nozip.onnx")
    x = RNG.random((12, 6), dtype=np.float32)
    np.savez(tmp_path / "d.npz", images=x, labels=(x @ w.T).argmax(1))
    res = run(["certify", str(model), str(tmp_path / "d.npz"), *RUN, "--out", str(tmp_path / "r.tsv")])
    assert res.exit_code == 0, res.output
    assert "using 'label'" in res.stderr and "all 8 load-time trial inputs" in res.stderr
    meta = json.loads((tmp_path / "r.tsv.meta.json").read_text())
    sig = meta["model"]["signature"]
    assert sig["output_name"] == "label" and sig["output_kind"] == "indices" and sig["num_classes"] == 3
    assert meta["clean_accuracy"]["accuracy"] == 1.0 and meta["clean_accuracy"]["chance"] == pytest.approx(1 / 3)


def test_ambiguous_outputs_error_names_the_flag_not_the_python_argument(tmp_path, capsys):
    from rs_onnx.cli import main

    w = RNG.normal(size=(3, 6)).astype(np.float32)
    model = om.save(om.two_output_model(w), tmp_path / "two.onnx")
    np.savez(tmp_path / "d.npz", images=RNG.random((4, 6), dtype=np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(SystemExit) as e:
        main(["certify", str(model), str(tmp_path / "d.npz"), *RUN])
    assert e.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("rs-onnx: error:") and "--output-name NAME" in lines[0]
    # and the flag it names works
    res = run(["certify", str(model), str(tmp_path / "d.npz"), *RUN, "--output-name", "probs"])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------ part 4: grey arrays, features tables
@pytest.mark.parametrize("layout", ["nhw", "nhw1", "n1hw"])
def test_grey_npz_is_expanded_for_a_three_channel_model(tmp_path, layout, caplog):
    w = RNG.normal(size=(4, 3 * 5 * 5)).astype(np.float32)
    model = om.save(om.linear_model(w, input_shape=(3, 5, 5)), tmp_path / "rgb.onnx")
    grey = RNG.integers(0, 256, (10, 5, 5), dtype=np.uint8)
    rgb = np.repeat(grey[:, None], 3, axis=1)  # PIL's L -> RGB
    want = _ort_classes(model, rgb.astype(np.float32) / 255)
    stored = {"nhw": grey, "nhw1": grey[..., None], "n1hw": grey[:, None]}[layout]
    np.savez(tmp_path / "g.npz", images=stored, labels=want)
    out = tmp_path / "r.tsv"
    with caplog.at_level(logging.INFO):
        res = run(["certify", str(model), str(tmp_path / "g.npz"), *RUN, "--sigma", "0.01", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "repeated to 3 channels" in caplog.text
    meta = json.loads((tmp_path / "r.tsv.meta.json").read_text())
    assert meta["clean_accuracy"]["accuracy"] == 1.0  # the same classes as onnxruntime on R = G = B
    assert "repeated to 3 channels" in meta["data"]["channels"]


def test_grey_expansion_matches_the_image_file_conversion(tmp_path):
    from PIL import Image

    grey = RNG.integers(0, 256, (2, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=grey, labels=np.zeros(2, np.int64))
    Image.fromarray(grey[1]).save(tmp_path / "g1.png")
    arr = load_data(tmp_path / "g.npz", channels=3, size=(6, 7))
    img = load_data(tmp_path / "g1.png", label=0, channels=3, size=(6, 7))
    assert arr.image_shape == (3, 6, 7) and arr.images.shape == (2, 3, 6, 7)
    np.testing.assert_array_equal(arr.raw(1), img.raw(0))
    rgba = load_data(tmp_path / "g.npz", channels=4, size=(6, 7)).raw(0)
    assert rgba.shape == (4, 6, 7) and (rgba[3] == 255).all()
    # not expanded: a grey model, another size, a flat model
    assert load_data(tmp_path / "g.npz", channels=1, size=(6, 7)).image_shape == (1, 6, 7)
    assert load_data(tmp_path / "g.npz", channels=3, size=(7, 6)).image_shape == (1, 6, 7)
    assert load_data(tmp_path / "g.npz").image_shape == (1, 6, 7)


def _features(n=30, d=5, k=3):
    w = RNG.normal(size=(k, d)).astype(np.float32)
    x = RNG.normal(size=(n, d)).astype(np.float32)
    return w, x, (x @ w.T).argmax(1)


def _write_csv(path, x, y, header=None, label_at=None, opener=open):
    with opener(path, "wt") as f:
        if header:
            f.write(",".join(header) + "\n")
        for row, lab in zip(x, y):
            fields = [f"{v:.9g}" for v in row]
            fields.insert(len(fields) if label_at is None else label_at, str(int(lab)))
            f.write(",".join(fields) + "\n")


@pytest.mark.parametrize("variant", ["plain", "header", "gz", "first-by-index", "named"])
def test_numeric_csv_is_read_as_a_features_table(tmp_path, variant, caplog):
    w, x, y = _features()
    model = om.save(om.linear_model(w), tmp_path / "tab.onnx")
    path = tmp_path / ("f.csv.gz" if variant == "gz" else "f.csv")
    extra: list[str] = []
    if variant in ("plain", "gz"):
        _write_csv(path, x, y, opener=gzip.open if variant == "gz" else open)
    elif variant == "header":
        _write_csv(path, x, y, header=[f"f{i}" for i in range(5)] + ["target"])
    elif variant == "first-by-index":
        _write_csv(path, x, y, label_at=0)
        extra = ["--label-column", "0"]
    else:
        _write_csv(path, x, y, header=["a", "b", "cls", "c", "d", "e"], label_at=2)
        extra = ["--label-column", "cls"]
    out = tmp_path / "r.tsv"
    with caplog.at_level(logging.INFO):
        res = run(["certify", str(model), str(path), *RUN, *extra, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "read as a features table (5 features" in caplog.text
    meta = json.loads((tmp_path / "r.tsv.meta.json").read_text())
    assert meta["data"]["format"] == "features table" and meta["data"]["examples"] == 30
    assert meta["clean_accuracy"]["accuracy"] == 1.0  # features and labels read as written
    data = load_data(path, label_column=extra[1] if extra else None)
    np.testing.assert_allclose(np.stack([data.image(i) for i in range(30)]), x, rtol=1e-6)
    np.testing.assert_array_equal(data.labels, y)


def test_features_table_errors_are_one_line(tmp_path):
    _, x, y = _features(n=4)
    _write_csv(tmp_path / "f.csv", x, y)
    with pytest.raises(DataError, match="--label-column 'zz' is not a column; expected a 0-based index -6..5"):
        load_data(tmp_path / "f.csv", label_column="zz")
    (tmp_path / "bad.csv").write_text("1,2,3\n4,5,x\n")
    with pytest.raises(DataError, match=r"line 2: field 'x' is not a finite number"):
        load_data(tmp_path / "bad.csv")
    (tmp_path / "nan.csv").write_text("1,2,3\n4,nan,1\n")
    with pytest.raises(DataError, match=r"line 2: field 'nan' is not a finite number"):
        load_data(tmp_path / "nan.csv")
    (tmp_path / "frac.csv").write_text("1,2,0.5\n")
    with pytest.raises(DataError, match="label '0.5' is not an integer"):
        load_data(tmp_path / "frac.csv")
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(DataError, match="line 2: 2 fields; expected 3"):
        load_data(tmp_path / "ragged.csv")
    with pytest.raises(DataError, match="--path-column"):  # a features table takes only --label-column
        load_data(tmp_path / "f.csv", path_column="p", label_column="0")


def test_a_manifest_is_still_a_manifest(tmp_path, caplog):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,1\n")
    with caplog.at_level(logging.INFO):
        data = load_data(tmp_path / "m.csv")
    assert data.info["format"] == "manifest" and list(data.labels) == [1]
    assert "read as a manifest of image paths" in caplog.text


# ------------------------------------------------------------------ part 5: the smaller things
def test_one_class_for_every_example_is_noted_in_summary_meta_and_report(tmp_path):
    from rs_onnx import analysis
    from rs_onnx.report import run_warnings

    w = np.zeros((3, 6), np.float32)
    model = om.save(om.linear_model(w, np.array([0, 1, 0], np.float32)), tmp_path / "const.onnx")
    np.savez(tmp_path / "d.npz", images=RNG.random((12, 6), dtype=np.float32), labels=np.arange(12) % 3)
    out = tmp_path / "r.tsv"
    res = run(["certify", str(model), str(tmp_path / "d.npz"), *RUN, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "answers class 1 for all 12 examples" in res.output
    meta = json.loads((tmp_path / "r.tsv.meta.json").read_text())
    assert "answers class 1 for all 12 examples" in meta["one_class"]
    assert any("answers class 1" in w for w in run_warnings(analysis.read_run(out)))
    res = run(["certify", str(model), str(tmp_path / "d.npz"), *RUN, "--json", "--out", str(tmp_path / "j.tsv")])
    assert "answers class 1" in json.loads(res.stdout)["one_class"]


def test_one_class_note_rule():
    from rs_onnx.checks import one_class_note

    assert one_class_note([2] * 10, [0, 1] * 5) is not None
    assert one_class_note([2] * 9, [0, 1] * 4 + [0]) is None  # too few to say
    assert one_class_note([2] * 10 + [-1] * 5, [0, 1] * 7 + [0]) is not None  # abstentions do not count
    assert one_class_note([2] * 10, [2] * 10) is None  # data of one class
    assert one_class_note([2] * 9 + [1], [0, 1] * 5) is None
    assert "no labels" in one_class_note([0] * 10, [-1] * 10)


def test_chance_for_an_index_output_is_the_models_not_the_labels_seen(tmp_path):
    w = RNG.normal(size=(10, 6)).astype(np.float32)
    x = RNG.random((12, 6), dtype=np.float32)
    y = (x @ w.T).argmax(1)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    index = om.save(om.index_model(w), tmp_path / "idx.onnx")  # K not declared anywhere
    res = run(["certify", str(index), str(tmp_path / "d.npz"), *RUN, "--out", str(tmp_path / "a.tsv")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "a.tsv.meta.json").read_text())["clean_accuracy"]["chance"] is None
    assert "chance unknown" in res.output
    # an ai.onnx.ml classifier declares its classes (0..9): chance 10%, whatever labels were seen
    zipmap = om.save(om.sklearn_like_model(w, np.zeros(10, np.float32), zipmap=True), tmp_path / "zip.onnx")
    np.savez(tmp_path / "two.npz", images=x[:12], labels=np.arange(12) % 2)
    res = run(["certify", str(zipmap), str(tmp_path / "two.npz"), *RUN, "--out", str(tmp_path / "b.tsv")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b.tsv.meta.json").read_text())["clean_accuracy"]["chance"] == 0.1


def _float16_model(w):
    k, d = w.shape
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "wt"], ["logits"])],
        "fp16",
        [h.make_tensor_value_info("x", T.FLOAT16, ["N", d])],
        [h.make_tensor_value_info("logits", T.FLOAT16, ["N", k])],
        [onnx.numpy_helper.from_array(w.T.astype(np.float16), "wt")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_a_float16_model_is_not_logged_as_fp32(tmp_path, caplog):
    from rs_onnx.classifier import OnnxClassifier

    w = RNG.normal(size=(3, 6)).astype(np.float32)
    path = om.save(_float16_model(w), tmp_path / "half.onnx")
    with caplog.at_level(logging.INFO, logger="rs_onnx.classifier"):
        clf = OnnxClassifier(path, device="cpu")
    line = next(r.getMessage() for r in caplog.records if "batch mode" in r.getMessage())
    assert "fp32" not in line and "float16 I/O" in line
    assert clf.input_dtype == np.float16


def test_nodes_out_of_topological_order_are_sorted_not_refused(tmp_path, caplog):
    """onnxruntime's float16 converter (keep_io_types) leaves its input Casts after the nodes using them:
    onnxruntime runs such a model, onnx.checker refused it."""
    from rs_onnx.classifier import OnnxClassifier
    from rs_onnx.errors import ModelError

    w = RNG.normal(size=(3, 6)).astype(np.float32)
    nodes = [
        h.make_node("MatMul", ["x2", "wt"], ["logits"]),  # uses x2 before the node that makes it
        h.make_node("Mul", ["x", "two"], ["x2"]),
    ]
    inits = [onnx.numpy_helper.from_array(w.T.copy(), "wt"), onnx.numpy_helper.from_array(np.float32(2.0), "two")]
    g = h.make_graph(
        nodes,
        "unsorted",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", 6])],
        [h.make_tensor_value_info("logits", T.FLOAT, ["N", 3])],
        inits,
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "unsorted.onnx"
    onnx.save(m, path)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(str(path))
    with caplog.at_level(logging.INFO, logger="rs_onnx.graph"):
        clf = OnnxClassifier(path, device="cpu")
    assert "not in topological order" in caplog.text
    x = RNG.random((5, 6), dtype=np.float32)
    np.testing.assert_array_equal(clf.predict(x), (2 * x @ w.T).argmax(1))
    # a cycle is still refused, with onnx.checker's reason
    cyclic = h.make_graph(
        [h.make_node("Mul", ["x", "b"], ["a"]), h.make_node("Add", ["a", "x"], ["b"])],
        "cycle",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
        [h.make_tensor_value_info("b", T.FLOAT, ["N", 3])],
    )
    cm = h.make_model(cyclic, opset_imports=[h.make_opsetid("", 13)])
    cm.ir_version = 8
    onnx.save(cm, tmp_path / "cycle.onnx")
    with pytest.raises(ModelError, match="onnx.checker rejects it"):
        OnnxClassifier(tmp_path / "cycle.onnx", device="cpu")
