"""Reading a model's input and output without a session (rs_onnx.model_io): every branch on plain arrays,
including the ones that otherwise run only on CUDA (the in-graph ArgMax's outputs)."""

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from rs_onnx import graph
from rs_onnx.errors import ConfigError, ModelError
from rs_onnx.model_io import ClassOutput, NotClasses, choose_input, choose_output, classify, decode, disagreement
from rs_onnx.model_io import feed, random_inputs, resolve_shape, rows


def proto(inputs, outputs):
    """A model whose graph only declares its inputs and outputs: (name, elem type, dims)."""
    vi = [h.make_tensor_value_info(n, t, d) for n, t, d in inputs]
    vo = [h.make_tensor_value_info(n, t, d) for n, t, d in outputs]
    return h.make_model(h.make_graph([], "g", vi, vo))


# ------------------------------------------------------------------ rows and kinds
def test_rows_reads_scores_and_indices_and_refuses_the_rest():
    assert rows(np.zeros((4, 3, 1, 1)), 4, "scores").shape == (4, 3)
    assert rows(np.zeros(3), 1, "scores").shape == (1, 3)  # one example without its batch dim
    assert rows(np.zeros((4, 1), np.int64), 4, "indices").shape == (4,)
    for arr, b, kind in [
        (np.zeros((4, 3, 2)), 4, "scores"),
        (np.zeros((5, 3)), 4, "scores"),
        (np.zeros((4, 2), np.int64), 4, "indices"),
        ([0, 1], 2, "indices"),
    ]:
        with pytest.raises(NotClasses):
            rows(arr, b, kind)


@pytest.mark.parametrize(
    "arr,b,want",
    [
        (np.zeros((4, 3), np.float32), 4, ("scores", 3)),
        (np.zeros((4, 3), np.int64), 4, ("scores", 3)),  # integer scores (e.g. votes)
        (np.zeros(4, np.int64), 4, ("indices", None)),
        (np.zeros((4, 1)), 4, None),  # one score per row is not a class
        (np.zeros(4, bool), 4, None),
        (np.array(["a"] * 4), 4, None),
        (np.zeros((3, 5)), 4, None),
        (np.zeros((4, 1, 3), np.int64), 4, None),  # integers, neither one index per row nor K >= 2 scores
    ],
)
def test_classify(arr, b, want):
    assert classify(arr, b) == want


def test_random_inputs_cover_every_dtype():
    rng = np.random.default_rng(0)
    f = random_inputs((50,), np.dtype(np.float16), rng)
    assert f.dtype == np.float16 and 0 <= f.min() and f.max() < 1
    u = random_inputs((5000,), np.dtype(np.uint8), rng)
    assert u.dtype == np.uint8 and u.min() == 0 and u.max() == 255
    assert random_inputs((10,), np.dtype(bool), rng).dtype == bool
    assert set(np.unique(random_inputs((100,), np.dtype(np.int32), rng))) == {0, 1}


def test_random_inputs_too_large_is_one_model_error():
    with pytest.raises(ModelError, match="do not fit in memory"):
        random_inputs((1 << 40, 1 << 20), np.dtype(np.float32), np.random.default_rng(0))


# ------------------------------------------------------------------ the input
def test_choose_input_needs_one_free_input_and_casts_extras():
    m = proto([("x", T.FLOAT, ["N", 3]), ("t", T.INT64, ["N", 1]), ("k", T.FLOAT, [2])], [("y", T.FLOAT, ["N", 2])])
    with pytest.raises(ModelError, match="expected one input to perturb"):
        choose_input(m, "m", None, {})
    with pytest.raises(ModelError, match=r"inputs \['k'\] have no value"):
        choose_input(m, "m", "x", {"t": [3]})
    with pytest.raises(ConfigError, match="no input named 'z'"):
        choose_input(m, "m", "z", {})
    with pytest.raises(ConfigError, match="dtype float64; expected int64"):
        choose_input(m, "m", "x", {"t": [1.5], "k": [0, 0]})
    inp = choose_input(m, "m", None, {"t": np.array([3], np.int32), "k": [1.0, 2.0]})
    assert inp.name == "x" and inp.dtype == np.float32 and inp.dims == ["N", 3]
    t, batched = inp.extra["t"]
    assert t.dtype == np.int64 and batched  # one example's value, broadcast over the batch
    k, batched_k = inp.extra["k"]
    assert k.dtype == np.float32 and not batched_k  # a value of the input's full rank: fed as is
    got = feed(inp, np.zeros((5, 3), np.float32))
    assert got["x"].shape == (5, 3) and got["t"].shape == (5, 1) and got["k"].shape == (2,)
    assert feed(inp, np.zeros((1, 3), np.float32), unbatched=True)["x"].shape == (3,)


def test_a_batch_one_extra_value_is_broadcast_and_the_perturbed_input_refused():
    m = proto([("x", T.FLOAT, ["N", 3]), ("t", T.FLOAT, [1, 2])], [("y", T.FLOAT, ["N", 2])])
    inp = choose_input(m, "m", "x", {"t": np.ones((1, 2))})
    assert inp.extra["t"][0].shape == (2,) and inp.extra["t"][1]
    with pytest.raises(ConfigError, match="the input to perturb"):
        choose_input(m, "m", "x", {"x": np.ones(3), "t": np.ones(2)})


def test_a_string_input_is_refused():
    m = proto([("s", T.STRING, ["N"])], [("y", T.FLOAT, ["N", 2])])
    with pytest.raises(ModelError, match="expected a numeric tensor"):
        choose_input(m, "m", None, {})


def test_resolve_shape():
    assert resolve_shape([3, 4], None, "m", "x") == (3, 4)
    assert resolve_shape(["h", 4], [5, 4], "m", "x") == (5, 4)
    with pytest.raises(ModelError, match=r"\[h, 4\], not all fixed; expected --input-shape") as e:
        resolve_shape(["h", 4], None, "m", "x")
    assert "input_shape" not in str(e.value)
    with pytest.raises(ConfigError, match=r"--input-shape 3,5: .*expected 2 values matching its fixed dims"):
        resolve_shape([3, 4], [3, 5], "m", "x")
    assert resolve_shape(["c", "h", "w"], [1, 3, 8, 8], "m", "x") == (3, 8, 8)  # batch dim given: dropped
    with pytest.raises(ConfigError):
        resolve_shape([3, 4], [3], "m", "x")


# ------------------------------------------------------------------ the output
def test_choose_output_names_the_candidates():
    m = proto([("x", T.FLOAT, ["N", 3])], [("a", T.FLOAT, ["N", 3]), ("b", T.INT64, ["N"]), ("c", T.FLOAT, ["N", 1])])
    # scores and indices that disagree (argmax 0, index 1), no ai.onnx.ml classifier: ambiguous, the flag named
    outs = {"a": np.zeros((2, 3), np.float32), "b": np.ones(2, np.int64), "c": np.zeros((2, 1), np.float32)}
    with pytest.raises(ModelError, match="2 outputs could be the classes.*differs from.*pass --output-name NAME"):
        choose_output(m, outs, 2, None, "m")
    agreeing = {**outs, "a": np.array([[0, 1, 0], [0, 2, 1]], np.float32)}  # argmax 1, 1: the index output agrees
    assert choose_output(m, agreeing, 2, None, "m") == ClassOutput("b", "indices", 3, np.dtype(np.int64), ())
    # agreement is checked on every trial run, not only the first
    with pytest.raises(ModelError, match="differs from the argmax of 'a' on 2 of 4"):
        choose_output(m, agreeing, 2, None, "m", trials=[outs])
    got = choose_output(m, outs, 2, "a", "m")
    assert got == ClassOutput("a", "scores", 3, np.dtype(np.float32), (3,))
    assert choose_output(m, outs, 2, "b", "m").kind == "indices"
    with pytest.raises(ModelError, match=r"output 'c' has shape \[N, 1\]"):
        choose_output(m, outs, 2, "c", "m")
    with pytest.raises(ConfigError, match="no output named 'z'"):
        choose_output(m, outs, 2, "z", "m")
    with pytest.raises(ModelError, match="no output looks like classes"):
        choose_output(m, {"c": outs["c"], "s": ["x", "y"]}, 2, None, "m")


def test_decode_scores_indices_and_the_in_graph_argmax():
    scores = ClassOutput("y", "scores", 3, np.dtype(np.float32), (3,))
    s = np.array([[0, 2, 1], [5, 5, 0], [np.nan, 0, 1]], np.float32)
    c, f = decode([s], 3, scores, False, "m")
    np.testing.assert_array_equal(c, [1, 0, 0])  # ties: the first index
    np.testing.assert_array_equal(f, [True, True, False])
    # the appended ArgMax (CUDA's default): classes, and a float that is not finite where a score was not
    c, f = decode([np.array([[1], [0], [2]], np.int64), np.array([0.0, 1.0, np.inf], np.float32)], 3, scores, True, "m")
    np.testing.assert_array_equal(c, [1, 0, 2])
    np.testing.assert_array_equal(f, [True, True, False])
    with pytest.raises(ModelError, match=f"output '{graph.CLASS_OUTPUT}' has shape \\[2\\] for a batch of 3"):
        decode([np.zeros(2, np.int64), np.zeros(2)], 3, scores, True, "m")
    with pytest.raises(ModelError, match=r"output 'y' has shape \[3, 4, 2\] for a batch of 3; expected \[3, 3\]"):
        decode([np.zeros((3, 4, 2))], 3, scores, False, "m")
    indices = ClassOutput("k", "indices", None, np.dtype(np.int64), ())
    c, f = decode([np.array([4, 0, 9])], 3, indices, False, "m")
    np.testing.assert_array_equal(c, [4, 0, 9]) and f.all()
    with pytest.raises(ModelError, match=r"expected \[3\]"):
        decode([np.zeros(2, np.int64)], 3, indices, False, "m")


# ------------------------------------------------------------------ batched rows against one-by-one rows
def test_disagreement():
    ref = np.array([[0.0, 1.0], [2.0, 0.0]])
    assert disagreement(ref.copy(), ref, "scores") is None
    assert disagreement(ref + 1e-6, ref, "scores") is None
    assert "away from one-by-one" in disagreement(ref + [[0.5, 0.0], [0.0, 0.0]], ref, "scores")
    assert "non-finite" in disagreement(np.array([[np.nan, 1.0], [2.0, 0.0]]), ref, "scores")
    assert disagreement(np.array([3, 1]), np.array([3, 1]), "indices") is None
    assert (
        disagreement(np.array([3, 2]), np.array([3, 1]), "indices")
        == "gives 1 of 2 classes different from one-by-one runs"
    )
    # fp16 rows get a looser tolerance (1e-2 of the scale) than fp32 ones (1e-3)
    assert disagreement((ref + 0.005).astype(np.float16), ref, "scores") is None
    assert disagreement((ref + 0.005).astype(np.float32), ref, "scores") is not None
