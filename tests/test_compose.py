"""rs_onnx.compose: denoiser + preprocessing + classifier as one ONNX model (denoised smoothing)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rs_onnx import OnnxClassifier, SmoothedClassifier, graph
from rs_onnx.compose import compose, compose_files, prepend_preprocessing
from rs_onnx.errors import ConfigError, ModelError
from rs_onnx.preprocess import Preprocessor, PreprocessSpec
from tests import onnx_models as om

from tests.conftest import SHARED

MNIST_MODELS = SHARED / "models" / "mnist"
MNIST_TEST = SHARED / "data" / "mnist_test.npz"


def denoiser(image_shape, *, gain=None, opset=17, ir_version=8, sigma=None, batch="N", in_name="x", out_name="y"):
    """An ONNX "denoiser" [batch, *image_shape] -> same: the identity, or x * gain with ``gain``."""
    x = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, *image_shape])
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, *image_shape])
    if gain is None:
        nodes, inits = [helper.make_node("Identity", [in_name], [out_name])], []
    else:
        nodes = [helper.make_node("Mul", [in_name, "gain"], [out_name])]
        inits = [numpy_helper.from_array(np.array(gain, np.float32), "gain")]
    model = helper.make_model(
        helper.make_graph(nodes, "denoiser", [x], [y], inits), opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = ir_version
    if sigma is not None:
        helper.set_model_props(model, {"rs_onnx.denoiser_sigma": str(sigma)})
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """First output of ``model`` on x, fed to its only real input."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def reference(classifier: onnx.ModelProto, spec: PreprocessSpec, images: np.ndarray) -> np.ndarray:
    """Scores of ``classifier`` on ``images`` [B, *image_shape] preprocessed by rs_onnx's Preprocessor, one by one."""
    stripped = graph.strip_initializer_inputs(classifier)
    value = graph.real_inputs(stripped)[0]
    pre = Preprocessor(spec, images.shape[1:], graph.dims(value)[1:], graph.np_dtype(value))
    return np.concatenate([run(stripped, pre.cast(pre.clean(x))[None]) for x in images])


def images(shape, n=6, seed=0):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


RNG = np.random.default_rng(1)
CASES = {
    # name: (classifier, image shape, preprocessing)
    "nchw_mean_std": (
        om.linear_model(RNG.normal(size=(3, 16)), input_shape=(1, 4, 4), batch="N"),
        (1, 4, 4),
        PreprocessSpec(mean=(0.1307,), std=(0.3081,)),
    ),
    "nhwc_per_channel": (
        om.linear_model(RNG.normal(size=(4, 48)), RNG.normal(size=4), input_shape=(4, 4, 3)),
        (3, 4, 4),
        PreprocessSpec(layout="nhwc", mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)),
    ),
    "nhwc_auto_scale": (
        om.linear_model(RNG.normal(size=(4, 48)), input_shape=(4, 4, 3)),
        (3, 4, 4),
        PreprocessSpec(scale=255.0, mean=(125.0, 120.0, 110.0), std=(60.0, 61.0, 62.0)),
    ),
    "flat_batch1": (
        om.reshape_model(RNG.normal(size=(5, 16)), input_shape=(16, 1), batch=1, shape=[1, 16]),
        (1, 4, 4),
        PreprocessSpec(),
    ),
    "batch1_opset8_init_inputs": (om.ir3_model(RNG.normal(size=(3, 16))), (1, 4, 4), PreprocessSpec(layout="flat")),
    "uint8_input": (om.uint8_model(RNG.normal(size=(3, 16))), (1, 4, 4), PreprocessSpec(scale=255.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_identity_denoiser_keeps_the_classifier_outputs(case):
    classifier, image_shape, spec = CASES[case]
    composed = compose(denoiser(image_shape), classifier, preprocess=spec)
    x = images(image_shape)
    got, want = run(composed, x), reference(classifier, spec, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert graph.dims(composed.graph.input[0]) == ["N", *image_shape]
    assert [o.name for o in composed.graph.output] == [o.name for o in classifier.graph.output]


def test_denoiser_output_feeds_the_preprocessing():
    classifier, image_shape, spec = CASES["nhwc_per_channel"]
    composed = compose(denoiser(image_shape, gain=0.5), classifier, preprocess=spec)
    x = images(image_shape)
    np.testing.assert_allclose(run(composed, x), reference(classifier, spec, 0.5 * x), rtol=1e-5, atol=1e-5)


def test_integer_cast_rounds_and_clips_like_the_preprocessor():
    classifier, image_shape, spec = CASES["uint8_input"]
    composed = compose(denoiser(image_shape, gain=1.7), classifier, preprocess=spec)  # values above 255 clip
    x = images(image_shape, n=20)
    x[0, 0, 0, :] = [0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0]  # ties round half to even, as numpy
    np.testing.assert_allclose(run(composed, x), reference(classifier, spec, np.float32(1.7) * x), atol=1e-4)


def test_batch_fixed_at_one_becomes_dynamic():
    for case in ("flat_batch1", "batch1_opset8_init_inputs"):
        classifier, image_shape, spec = CASES[case]
        composed = compose(denoiser(image_shape), classifier, preprocess=spec)
        x = images(image_shape, n=7)
        assert run(composed, x).shape[0] == 7
        assert graph.dims(composed.graph.output[0])[0] != 1


def test_opsets_are_aligned_both_ways():
    classifier, image_shape, spec = CASES["batch1_opset8_init_inputs"]
    up = compose(denoiser(image_shape, opset=17), classifier, preprocess=spec)
    assert graph.opset_version(up) == 17 and up.ir_version >= 8
    assert len(up.opset_import) == 1
    newer = om.linear_model(RNG.normal(size=(3, 16)), input_shape=(1, 4, 4))  # opset 13, IR 8
    old_denoiser = denoiser(image_shape, gain=0.5, opset=9, ir_version=4)
    down = compose(old_denoiser, newer)
    assert graph.opset_version(down) == 13
    x = images(image_shape)
    np.testing.assert_allclose(run(down, x), reference(newer, PreprocessSpec(), 0.5 * x), rtol=1e-5, atol=1e-5)


def test_metadata_names_and_sigma():
    classifier, image_shape, spec = CASES["nchw_mean_std"]
    composed = compose(denoiser(image_shape, sigma=0.25), classifier, preprocess=spec)
    props = {p.key: p.value for p in composed.metadata_props}
    assert props["rs_onnx.denoiser_sigma"] == "0.25" and props["rs_onnx.sigma"] == "0.25"
    info = json.loads(props["rs_onnx.composed"])
    assert info["preprocess"]["mean"] == [0.1307] and info["preprocess"]["layout"] == "nchw"
    assert composed.graph.input[0].name == "x"
    names = [n.name for n in composed.graph.node if n.name]
    assert len(names) == len(set(names))
    assert not {o.name for o in composed.graph.output} & {i.name for i in composed.graph.input}


def test_composed_model_certifies(tmp_path):
    # class 1 iff the mean pixel exceeds 0.5; bright and dark images are far from the boundary
    w = np.full(16, 1.0 / 16, np.float32)
    classifier = om.reshape_model(w, b=-0.5, input_shape=(16, 1), batch=1, shape=[1, 16])
    path = compose_files(
        om.save(denoiser((1, 4, 4), sigma=0.25), tmp_path / "d.onnx"),
        om.save(classifier, tmp_path / "c.onnx"),
        tmp_path / "out" / "dc.onnx",
    )
    clf = OnnxClassifier(path, device="cpu")
    assert clf.batch_mode == "dynamic" and clf.input_shape == (1, 4, 4)
    xs = [np.full((1, 4, 4), 0.9, np.float32), np.full((1, 4, 4), 0.1, np.float32)]
    certs = SmoothedClassifier(clf, sigma=0.25, seed=0, batch_size=256).certify_many(xs, n0=50, n=500, alpha=0.001)
    assert [c.predict for c in certs] == [1, 0]
    for c in certs:  # the mean of 16 noisy pixels is N(+-0.4, (0.25/4)^2): pA ~ 1
        assert c.n_a == 500 and 0.5 < c.radius < 0.25 * 4


def test_prepend_preprocessing_alone():
    classifier, image_shape, spec = CASES["nhwc_per_channel"]
    model = prepend_preprocessing(classifier, spec, image_shape, image_name="pixels")
    assert model.graph.input[0].name == "pixels"
    x = images(image_shape)
    np.testing.assert_allclose(run(model, x), reference(classifier, spec, x), rtol=1e-5, atol=1e-5)


def test_errors_say_what_was_expected():
    classifier, image_shape, spec = CASES["nchw_mean_std"]
    with pytest.raises(ConfigError, match="channels"):
        compose(denoiser(image_shape), classifier, preprocess=PreprocessSpec(mean=(0.1, 0.2, 0.3), std=(1, 1, 1)))
    fixed2 = om.linear_model(np.ones((2, 16)), input_shape=(1, 4, 4), batch=2)
    with pytest.raises(ModelError, match="fixed at 2"):
        compose(denoiser(image_shape), fixed2)
    with pytest.raises(ModelError, match="expected the input's shape"):
        bad = denoiser(image_shape)
        bad.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 5
        compose(bad, classifier)
    with pytest.raises(ModelError, match="values"):  # 16 image values vs 48 model values
        compose(denoiser(image_shape), CASES["nhwc_per_channel"][0])
    with pytest.raises(ModelError, match="fixed sizes"):
        compose(denoiser(["C", 4, 4]), classifier)
    with pytest.raises(ModelError, match=r"expected \[N, 1, 5, 5\]"):
        compose(denoiser(image_shape), classifier, image_shape=(1, 5, 5))
    x = images(image_shape)  # a symbolic image shape is fine when given
    symbolic = compose(denoiser(["C", "H", "W"]), classifier, preprocess=spec, image_shape=image_shape)
    np.testing.assert_allclose(run(symbolic, x), reference(classifier, spec, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="no input named"):
        compose(denoiser(image_shape), classifier, classifier_input_name="nope")


def _mnist():
    if not MNIST_MODELS.is_dir() or not MNIST_TEST.is_file():
        pytest.skip(f"real MNIST models and data not found under {SHARED} (../shared beside the project)")
    with np.load(MNIST_TEST) as f:
        return f["images"][:20].astype(np.float32)[:, None] / 255.0, f["labels"][:20].astype(np.int64)


@pytest.mark.parametrize(
    "name", ["convnet_avgpool.onnx", "mnist-8.onnx", "mnist-net_256x2.onnx", "mnist_relu_9_200.onnx"]
)
def test_real_mnist_models_keep_their_predictions(name, tmp_path):
    x, labels = _mnist()
    if not (MNIST_MODELS / name).is_file():
        pytest.skip(f"{MNIST_MODELS / name} not found")
    path = compose_files(
        om.save(denoiser((1, 28, 28), sigma=0.5), tmp_path / "id.onnx"), MNIST_MODELS / name, tmp_path / f"id_{name}"
    )
    original = graph.load_model(MNIST_MODELS / name)
    want = reference(original, PreprocessSpec(), x).argmax(1)
    clf = OnnxClassifier(path, device="cpu")
    assert clf.batch_mode == "dynamic" and clf.input_shape == (1, 28, 28)
    assert (clf.predict(x) == want).all()
    assert (want == labels).mean() >= 0.9
