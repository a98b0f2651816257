"""Bad input, tried systematically (hypothesis): one clear line, exit code 1, no traceback, no output file."""

import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from rs_onnx.cli import main
from rs_onnx.guard import DTYPES, check_yaml, escape, quiet_warnings
from rs_onnx.inputs import MAX_COUNT, MAX_SIGMA, RESOLUTION
from tests.onnx_models import linear_model, save

W = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
# 700 generated inputs per run (200 YAML files, 200 .npz files, 100 model files, 200 sets of numbers).
SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], derandomize=True
)


@pytest.fixture(scope="module")
def files():
    tmp = Path(tempfile.mkdtemp(prefix="rs-onnx-bad-"))
    model = save(linear_model(W, input_shape=(1, 4, 4), batch=1), tmp / "m.onnx")
    np.savez(tmp / "good.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1, 2], np.uint8))
    return tmp, model


def run_cli(capsys, argv, out: Path):
    """Runs the CLI in-process; returns (exit code, stderr). Asserts the error contract on failure."""
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(out)])
    err = capsys.readouterr().err
    code = e.value.code
    if code != 0:
        errors = [line for line in err.splitlines() if line.startswith("rs-onnx: error:")]
        assert code in (1, 2) and len(errors) == 1, err  # 2: usage errors (a value that is not a number...)
        assert "Traceback" not in err and "internal error" not in err, err
        assert not out.exists(), "no output file may be left behind after a refused input"
    else:
        assert out.exists()
        out.unlink()
    return code, err


BASE = ["--sigma", "0.25", "--n0", "5", "--n", "20", "--seed", "0"]

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(
    [
        "sigma",
        "n",
        "n0",
        "alpha",
        "batch_size",
        "seed",
        "mean",
        "std",
        "layout",
        "scale",
        "preset",
        "skip",
        "start",
        "end",
        "device",
        "bound",
        "sigmaa",
        "batch",
        "dtype",
        "noise_threads",
    ]
)


@settings(SETTINGS, max_examples=200)
@given(st.one_of(st.dictionaries(keys, yaml_values, max_size=4), yaml_values, st.text(max_size=40)))
def test_any_yaml_config_is_accepted_or_refused_in_one_line(files, capsys, doc):
    tmp, model = files
    cfg = tmp / "c.yaml"
    cfg.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    run_cli(
        capsys,
        [
            "certify",
            str(model),
            str(tmp / "good.npz"),
            "--config",
            str(cfg),
            "--n",
            "20",
            "--n0",
            "5",
            "--device",
            "cpu",
        ],
        tmp / "o.tsv",
    )


dtypes = st.sampled_from([np.uint8, np.int8, np.int64, np.float32, np.float64, np.bool_, np.complex64, np.float16])


@settings(SETTINGS, max_examples=200)
@given(
    images=hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)),
    labels=hnp.arrays(
        st.sampled_from([np.uint8, np.int64, np.float32, np.int8]), hnp.array_shapes(min_dims=0, max_dims=2, max_side=5)
    ),
    keys=st.sampled_from([("images", "labels"), ("image", "labels"), ("images", "label"), ("x", "y")]),
)
def test_any_npz_is_accepted_or_refused_in_one_line(files, capsys, images, labels, keys):
    tmp, model = files
    data = tmp / "d.npz"
    np.savez(data, **{keys[0]: images, keys[1]: labels})
    run_cli(capsys, ["certify", str(model), str(data), *BASE], tmp / "o.tsv")


@SETTINGS
@given(cut=st.floats(0.0, 0.999), junk=st.binary(max_size=64))
def test_truncated_or_corrupt_models_are_refused(files, capsys, cut, junk):
    tmp, model = files
    raw = model.read_bytes()
    bad = tmp / "bad.onnx"
    bad.write_bytes(raw[: int(len(raw) * cut)] + junk)
    code, err = run_cli(capsys, ["certify", str(bad), str(tmp / "good.npz"), *BASE], tmp / "o.tsv")
    assert code == 1 or len(junk) == 0 and cut == 0  # nothing but a whole model loads


@settings(SETTINGS, max_examples=200)
@given(
    n=st.integers(-5, 10**12),
    n0=st.integers(-5, 10**12),
    batch=st.integers(-5, 10**9),
    alpha=st.floats(allow_nan=True, allow_infinity=True),
    sigma=st.floats(allow_nan=True, allow_infinity=True),
)
def test_absurd_numbers_are_refused_before_any_work(files, capsys, n, n0, batch, alpha, sigma):
    tmp, model = files
    argv = [
        "certify",
        str(model),
        str(tmp / "good.npz"),
        "--n",
        str(n),
        "--n0",
        str(n0),
        "--batch-size",
        str(batch),
        "--alpha",
        repr(alpha),
        "--sigma",
        repr(sigma),
        "--seed",
        "0",
    ]
    # sigma: at most MAX_SIGMA, and large enough for float32 to hold noise of that size at the data's zeros
    tiny = float(np.spacing(np.float32(0))) / RESOLUTION
    valid = n >= 1 and n0 >= 1 and 1 <= batch <= 10**7 and 0 < alpha < 1 and tiny <= sigma <= MAX_SIGMA
    if valid:  # only check that valid settings are accepted up to the point of sampling
        argv[argv.index("--n") + 1] = "20"
        argv[argv.index("--n0") + 1] = "5"
        argv[argv.index("--batch-size") + 1] = str(min(batch, 64))
    code, _ = run_cli(capsys, argv, tmp / "o.tsv")
    assert code == (0 if valid else 1)


def test_empty_files_and_missing_external_data(files, capsys, tmp_path):
    tmp, model = files
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "empty.yaml").write_text("")
    for argv in (
        ["certify", str(tmp_path / "empty.onnx"), str(tmp / "good.npz"), *BASE],
        ["certify", str(model), str(tmp_path / "empty.npz"), *BASE],
    ):
        assert run_cli(capsys, argv, tmp_path / "o.tsv")[0] == 1
    m = onnx.load(str(model))
    onnx.save_model(
        m,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.bin",
        size_threshold=0,
    )
    (tmp_path / "ext.bin").unlink()
    code, err = run_cli(
        capsys, ["certify", str(tmp_path / "ext.onnx"), str(tmp / "good.npz"), *BASE], tmp_path / "o.tsv"
    )
    assert code == 1 and "ext.bin" in err


def test_pickled_npz_is_never_unpickled(files, capsys, tmp_path):
    tmp, model = files
    np.savez(tmp_path / "p.npz", images=np.array([object()], dtype=object), labels=np.zeros(1, np.uint8))
    code, err = run_cli(capsys, ["certify", str(model), str(tmp_path / "p.npz"), *BASE], tmp_path / "o.tsv")
    assert code == 1 and "pickle" in err.lower()


# ------------------------------------------------------------------ every class of bad input: one line
# (issue 14: --batch-size text, --dtype, rs_onnx.sigma metadata, untrusted strings, long names, YAML bombs,
# huge declared shapes, --denoiser and compose -o paths, third-party chatter on stderr)

# Control characters and line breaks an attacker could put into a name to split or forge a message.
nasty = st.lists(
    st.sampled_from(list("ab.-_ \n\r\t\x1b\x85\u2028\u2029é") + ["\nrs-onnx: error: forged"]), min_size=1, max_size=8
).map("".join)


def only_rs_onnx_lines(err: str) -> None:
    """Every stderr line is rs-onnx's own: nothing untrusted started a line of its own."""
    for line in err.splitlines():
        assert line.startswith("rs-onnx: "), err


@settings(SETTINGS, max_examples=60)
@given(
    text=st.one_of(
        st.text(max_size=12),
        st.sampled_from(
            ["auto", " AUTO ", "--5", "-0", "0", "²", "١٢", "1e3", "64", "0x10", "1_000", "10000001", "9" * 40]
        ),
    )
)
def test_any_batch_size_text_is_accepted_or_refused_in_one_line(files, capsys, text):
    tmp, model = files
    if text.startswith("-") and not text.startswith("--"):
        text = " " + text  # click would read "-5" as an option: the value arrives with a leading space
    code, err = run_cli(
        capsys, ["certify", str(model), str(tmp / "good.npz"), *BASE, "--batch-size=" + text], tmp / "o.tsv"
    )
    t = text.strip().lower()
    valid = t == "auto" or (re.fullmatch(r"[0-9]+", t) is not None and 1 <= int(t) <= 10_000_000)
    integer = re.fullmatch(r"-?[0-9]{1,30}", t) is not None and abs(int(t)) <= MAX_COUNT
    assert code == (0 if valid else 1 if integer else 2), (text, err)  # not an integer: a usage error


@settings(SETTINGS, max_examples=40)
@given(
    name=st.one_of(
        st.sampled_from([*DTYPES, "float", "double", "bool", "complex64", "object", "U8", "foo", "", " ", "float32\n"]),
        st.text(max_size=10),
    )
)
def test_any_dtype_is_accepted_or_refused_in_one_line(files, capsys, name):
    tmp, model = files
    code, err = run_cli(capsys, ["certify", str(model), str(tmp / "good.npz"), *BASE, "--dtype=" + name], tmp / "o.tsv")
    try:
        ok = np.dtype(name).name in DTYPES
    except (TypeError, ValueError):
        ok = False
    assert code == (0 if ok else 1), (name, err)
    if code:
        only_rs_onnx_lines(err)


@settings(SETTINGS, max_examples=40)
@given(value=st.one_of(st.text(max_size=10), st.floats().map(repr), st.sampled_from(["0.25", "1e-300", "-1", "inf"])))
def test_any_sigma_metadata_is_used_or_refused_in_one_line(files, capsys, value):
    tmp, _ = files
    m = linear_model(W, input_shape=(1, 4, 4), batch=1)
    helper.set_model_props(m, {"rs_onnx.sigma": value})
    path = save(m, tmp / "meta.onnx")
    code, err = run_cli(
        capsys, ["certify", str(path), str(tmp / "good.npz"), "--n0", "5", "--n", "20", "--seed", "0"], tmp / "o.tsv"
    )
    try:
        sigma = float(value)
    except ValueError:
        sigma = float("nan")
    tiny = float(np.spacing(np.float32(0))) / RESOLUTION  # noise float32 cannot hold at the data's zeros
    assert code == (0 if np.isfinite(sigma) and tiny <= sigma <= MAX_SIGMA else 1), (value, err)
    if code:
        only_rs_onnx_lines(err)


@settings(SETTINGS, max_examples=60)
@given(name=nasty, where=st.sampled_from(["output-name", "input-name", "model", "data", "config", "denoiser", "label"]))
def test_untrusted_strings_cannot_split_or_forge_the_message(files, capsys, name, where):
    """Names with newlines, CR, ESC, NUL or U+2028 are escaped: one line, and every line is rs-onnx's."""
    tmp, model = files
    argv = ["certify", str(model), str(tmp / "good.npz"), *BASE]
    missing = str(tmp / "no-such-dir" / name)
    if where in ("output-name", "input-name"):
        argv += [f"--{where}", name]
    elif where == "model":
        argv[1] = missing
    elif where == "data":
        argv[2] = missing
    elif where == "label":
        argv += ["--label", name]
    else:
        argv += [f"--{where}", missing]
    code, err = run_cli(capsys, argv, tmp / "o.tsv")
    assert code == 1 or (where == "label" and code == 2)  # --label takes a number: else a usage error
    only_rs_onnx_lines(err)
    assert "\x1b" not in err and "\x00" not in err and "\u2028" not in err and "\r" not in err


def test_a_model_whose_output_name_holds_a_newline_cannot_forge_a_line(files, capsys, tmp_path):
    tmp, _ = files
    m = linear_model(W, input_shape=(1, 4, 4), batch=1)
    forged = "scores\nrs-onnx: error: forged"
    for node in m.graph.node:
        node.output[:] = [forged if o == "scores" else o for o in node.output]
    m.graph.output[0].name = forged
    path = save(m, tmp_path / "nl.onnx")
    code, err = run_cli(
        capsys, ["certify", str(path), str(tmp / "good.npz"), *BASE, "--output-name", "nope"], tmp_path / "o.tsv"
    )
    assert code == 1 and "forged" in err
    only_rs_onnx_lines(err)


@pytest.mark.parametrize("where", ["model", "data", "config", "denoiser", "out"])
def test_over_long_file_names_are_refused_in_one_line(files, capsys, tmp_path, where):
    tmp, model = files
    long = str(tmp_path / ("a" * 300))
    argv = ["certify", str(model), str(tmp / "good.npz"), *BASE]
    out = tmp_path / "o.tsv"
    if where == "model":
        argv[1] = long + ".onnx"
    elif where == "data":
        argv[2] = long + ".npz"
    elif where == "out":
        out = tmp_path / ("b" * 245 + ".tsv")  # fits, but its .meta.json.tmp sibling would not
    else:
        argv += [f"--{where}", long]
    code, err = run_cli(capsys, argv, out)
    assert code == 1 and "expected at most" in err
    assert list(tmp_path.iterdir()) == []


def _yaml_files(tmp: Path) -> dict[str, Path]:
    deep = tmp / "deep.yaml"
    deep.write_text("sigma: " + "[" * 50_000 + "]" * 50_000 + "\n")
    anchors = "".join(
        f"  {chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(9)
    )
    bomb = tmp / "bomb.yaml"
    bomb.write_text("extra_inputs:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + anchors + "sigma: *j\n")
    big = tmp / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\nsigma: 0.25\n")
    return {"deep": deep, "bomb": bomb, "big": big}


@pytest.mark.parametrize("kind", ["deep", "bomb", "big"])
def test_yaml_bombs_are_refused_quickly_in_one_line(files, capsys, tmp_path, kind):
    tmp, model = files
    cfg = _yaml_files(tmp_path)[kind]
    t0 = time.perf_counter()
    code, err = run_cli(
        capsys,
        ["certify", str(model), str(tmp / "good.npz"), "--config", str(cfg), "--n", "20", "--n0", "5"],
        tmp / "o.tsv",
    )
    assert code == 1 and "config file" in err and time.perf_counter() - t0 < 10


def test_yaml_limits_allow_a_normal_config(tmp_path):
    text = yaml.safe_dump({"sigma": 0.25, "mean": [0.1, 0.2, 0.3], "extra_inputs": {"a": [[1, 2], [3, 4]]}})
    check_yaml(text.encode(), tmp_path / "ok.yaml")  # no exception
    check_yaml(b"a: &x [1, 2]\nb: *x\n", tmp_path / "alias.yaml")  # a few aliases are fine


def _huge_input_model(dims) -> onnx.ModelProto:
    """Input x [1, *dims] -> scores [1, 2] (mean and minus mean): runs for any declared shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *dims])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Neg", ["m"], ["n"]),
        helper.make_node("Concat", ["m", "n"], ["y"], axis=1),
    ]
    model = helper.make_model(helper.make_graph(nodes, "huge", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@settings(SETTINGS, max_examples=12)
@given(dims=st.lists(st.sampled_from([10**5, 10**6, 10**9, 2**31, 2**62]), min_size=2, max_size=4))
def test_huge_declared_shapes_are_refused_before_allocating(files, capsys, dims):
    tmp, _ = files
    path = save(_huge_input_model(dims), tmp / "huge.onnx")
    code, err = run_cli(capsys, ["certify", str(path), str(tmp / "good.npz"), *BASE], tmp / "o.tsv")
    assert code == 1 and "declares per-example shape" in err, err


def test_missing_or_directory_denoiser_is_one_line(files, capsys, tmp_path):
    tmp, model = files
    for denoiser in (tmp_path / "nothere.onnx", tmp_path):
        code, err = run_cli(
            capsys,
            ["certify", str(model), str(tmp / "good.npz"), *BASE, "--denoiser", str(denoiser)],
            tmp_path / "o.tsv",
        )
        assert code == 1 and "denoiser" in err


def test_compose_onto_a_directory_is_one_line_and_touches_nothing(files, capsys, tmp_path):
    _, model = files
    (tmp_path / "keep").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["compose", str(model), "--denoiser", str(model), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and [ln for ln in err.splitlines() if ln.startswith("rs-onnx: error:")] == [
        f"rs-onnx: error: output {tmp_path}: a directory; expected the path of the .onnx file to write"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


@given(st.text())
def test_escape_leaves_one_printable_line(text):
    out = escape(text)
    assert len(out.splitlines()) <= 1 and not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", out)
    if text.isprintable() and text.isascii():
        assert out == text


def test_numpy_warnings_are_silenced_and_others_are_one_escaped_line(capsys):
    with warnings.catch_warnings():
        quiet_warnings(False)
        np.array([1e300]).astype(np.float32)  # overflow: numpy's RuntimeWarning
        warnings.warn("look\nrs-onnx: error: forged", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "rs-onnx: warning: look\\nrs-onnx: error: forged\n"


def test_onnxruntime_log_lines_are_silenced_unless_debug(tmp_path):
    """onnxruntime's C++ logger writes to fd 2 itself: checked in a subprocess, quiet and with --debug."""
    from onnx import numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    w = numpy_helper.from_array(np.zeros((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [x, helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2])],
        [y],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = save(model, tmp_path / "warns.onnx")  # "Initializer w appears in graph inputs": an ORT warning
    code = (
        "import sys, onnxruntime as ort; from rs_onnx.guard import quiet_onnxruntime; "
        "quiet_onnxruntime(sys.argv[1] == 'debug'); ort.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", code, "quiet", str(path)], capture_output=True, text=True, check=False
    )
    loud = subprocess.run([sys.executable, "-c", code, "debug", str(path)], capture_output=True, text=True, check=False)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert "appears in graph inputs" in loud.stderr  # the check can fail: the warning exists
    assert quiet.stderr == ""
