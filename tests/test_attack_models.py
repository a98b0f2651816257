"""Failure paths of the model-card, input-shape and bench features (issues 26 and 29), tried as a user would:
each refusal is one ``rs-onnx: error:`` line with the right exit code, and nothing is silently wrong."""

from __future__ import annotations


import json
from pathlib import Path

import pytest

from rs_onnx.cli import main
from tests.test_shapes import images_npz, pooled_model

CERTIFY = ["--sigma", "0.12", "--n0", "10", "--n", "64", "--seed", "0", "--batch-size", "64"]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process through its console entry point: (exit code, stdout, stderr); a failure is exactly
    one error line and no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    got = capsys.readouterr()
    code = int(e.value.code or 0)
    if code != 0:
        errors = [line for line in got.err.splitlines() if line.startswith("rs-onnx: error:")]
        assert len(errors) == 1 and "Traceback" not in got.err, got.err
    return code, got.out, got.err


def error_line(err: str) -> str:
    """The one ``rs-onnx: error:`` line of stderr (its log lines may name the same files)."""
    (line,) = [ln for ln in err.splitlines() if ln.startswith("rs-onnx: error:")]
    return line


# ------------------------------------------------------------------ exit codes of the console entry point
@pytest.mark.parametrize(
    "argv",
    [
        ["certify", "--bogus"],
        ["--bogus"],
        ["certify", "--layout", "sideways"],
        ["bench", "--cudnn-algo-search", "fastest"],
        ["inspect"],
    ],
)
def test_usage_errors_exit_2_through_the_console_entry_point(capsys, argv):
    code, out, err = run(capsys, argv)
    assert code == 2 and out == "", err


# ------------------------------------------------------------------ a preprocessor_config.json that is wrong
def card_model(tmp_path: Path, card) -> Path:
    """An optimum-style model (symbolic C/H/W) with ``card`` (a dict, or raw text) as preprocessor_config.json."""
    model = pooled_model(tmp_path / "m" / "model.onnx")
    text = card if isinstance(card, str) else json.dumps(card)
    (model.parent / "preprocessor_config.json").write_text(text)
    return model


def image_folder(path: Path, modes=("RGB", "RGB"), size=(8, 8)) -> Path:
    """Class folders 0/ and 1/ with one PNG each of ``modes`` (e.g. "L" for grey), ``size`` (H, W) pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, mode in enumerate(modes):
        (path / str(i)).mkdir(parents=True, exist_ok=True)
        shape = size if mode == "L" else (*size, 3)
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode).save(path / str(i) / f"{i}.png")
    return path


NORM = {"do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


@pytest.mark.parametrize(
    "card, expected",
    [
        ({**NORM, "image_std": [0, 0.5, 0.5]}, "std [0.0, 0.5, 0.5]: expected positive numbers"),
        ('{"do_normalize": true, "image_mean": [0.5], "image_std": [NaN]}', "std [nan]: expected positive"),
        ({**NORM, "image_mean": [0.5, 0.5]}, "mean has 2 values and std 3"),
        ({"rescale_factor": 0}, "scale 0.0: expected a positive number"),
        ({"do_resize": True, "size": {"shortest_edge": 8}, "crop_pct": 1e-9}, "resize=7999999999"),
        ({"do_resize": True, "size": 10**9}, "resize=1000000000"),
    ],
)
def test_a_cards_bad_values_are_refused_naming_the_card(tmp_path, capsys, card, expected):
    """Before: the error named only the value ("std [0.0, ...]"), as if a flag had given it."""
    model, out = card_model(tmp_path, card), tmp_path / "o.tsv"
    data = image_folder(tmp_path / "imgs")  # image files: a card's resize applies to them
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--end", "2", "--out", str(out)])
    line = error_line(err)
    assert code == 1 and expected in line and "preprocessor_config.json" in line, err
    assert not out.exists()


@pytest.mark.parametrize("key", ["do_flip_channel_order", "do_normalize", "do_rescale", "do_resize"])
def test_a_cards_switch_that_is_not_a_boolean_is_refused(tmp_path, capsys, key):
    """Before: "no" and "false" are truthy strings: do_flip_channel_order "no" silently ran the model on BGR."""
    model, out = card_model(tmp_path, {**NORM, "size": 8, key: "no"}), tmp_path / "o.tsv"
    data = images_npz(tmp_path / "d.npz")
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--end", "2", "--out", str(out)])
    assert code == 1 and f"{key} = 'no'; expected true or false" in err, err
    assert not out.exists()


def test_a_card_with_json_booleans_still_flips_channels(tmp_path):
    from rs_onnx.modelcard import read_card

    model = card_model(tmp_path, {**NORM, "do_flip_channel_order": True, "do_resize": False, "size": 8})
    values = read_card(model.parent / "preprocessor_config.json").values
    assert values["channel_order"] == "bgr" and "resize" not in values and values["std"] == [0.5] * 3


# ------------------------------------------------------------------ rs-onnx bench
BENCH = ["--n", "100", "--n0", "10", "--batch-size", "8", "--seconds", "0.2", "--sigma", "0.25", "--json"]


def test_bench_takes_a_symbolic_models_shape_from_its_data_or_input_shape(tmp_path, capsys):
    """Before: bench refused an optimum-style model ([batch, num_channels, height, width]) with "expected
    --input-shape", a flag bench did not have, whatever DATA held."""
    model, data = pooled_model(tmp_path / "model.onnx"), images_npz(tmp_path / "d.npz")
    for args in ([str(model), str(data)], [str(model), "--input-shape", "3,8,8"]):
        code, out, err = run(capsys, ["bench", *args, *BENCH])
        res = json.loads(out)  # stdout holds the JSON only
        assert code == 0 and res["certify_samples_per_s"] > 0 and res["ceiling_samples_per_s"] > 0, err
    code, out, err = run(capsys, ["bench", str(model), *BENCH])
    assert code == 1 and out == "" and "--input-shape" in error_line(err)


@pytest.mark.parametrize("seconds", ["nan", "0", "-1"])
def test_bench_refuses_seconds_that_are_not_positive(capsys, seconds):
    code, out, err = run(capsys, ["bench", "--seconds", seconds, "--n", "100"])
    assert code == 1 and out == "" and f"--seconds {float(seconds)}" in error_line(err), err


# ------------------------------------------------------------------ symbolic channels, grey and colour files
def test_grey_and_colour_files_for_symbolic_channels_ask_for_the_channel_count(tmp_path, capsys):
    """Before: "images of different sizes ... 8x8 (1 channels), ... 8x8 (3 channels); expected one size: give
    --resize HxW", advice that cannot help. The flag that does help converts the grey file."""
    model = pooled_model(tmp_path / "m" / "model.onnx", dims=["N", "C", "H", "W"])
    data, out = image_folder(tmp_path / "imgs", modes=("L", "RGB")), tmp_path / "o.tsv"
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--out", str(out)])
    line = error_line(err)
    assert code == 1 and "different channel counts" in line and "--input-shape 3,8,8" in line, err
    assert not out.exists()
    code, _, err = run(
        capsys, ["certify", str(model), str(data), *CERTIFY, "--input-shape", "3,8,8", "--out", str(out)]
    )
    assert code == 0 and out.exists(), err


# ------------------------------------------------------------------ --input-shape text
@pytest.mark.parametrize("text", ["3,,8,8", "3,8,8,", ",3,8,8", "3x8xx8"])
def test_an_empty_dim_in_input_shape_is_refused_not_dropped(text):
    """Before: "3,,8,8" parsed as [3, 8, 8], and the error, if any, quoted a shape the user never gave."""
    from rs_onnx.errors import ConfigError
    from rs_onnx.shapes import parse_input_shape

    with pytest.raises(ConfigError, match="--input-shape"):
        parse_input_shape(text)


# ------------------------------------------------------------------ config.json id2label
@pytest.mark.parametrize(
    "labels", [{"0": "a", "2": "c"}, {"cat": "a", "dog": "b"}, {"-1": "a", "0": "b"}, {"0": "a", "0.5": "b"}]
)
def test_id2label_that_is_not_0_to_k_is_not_used_and_says_so(tmp_path, caplog, labels):
    """Before: such class names were dropped without a word (the report then showed bare class ids)."""
    import logging

    from rs_onnx.modelcard import class_names

    model = pooled_model(tmp_path / "model.onnx")
    (tmp_path / "config.json").write_text(json.dumps({"id2label": labels}))
    with caplog.at_level(logging.WARNING, logger="rs_onnx.modelcard"):
        assert class_names(str(model)) is None
    assert "id2label" in caplog.text and "not the class ids 0 to 1" in caplog.text, caplog.text
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "b", "0": "a"}}))
    assert class_names(str(model)) == ["a", "b"]


def test_inspect_does_not_suggest_a_cards_values_that_certify_refuses(tmp_path, capsys):
    """Before: inspect printed a suggested config with std [0.0, 0.5, 0.5] and exited 0."""
    model = card_model(tmp_path, {**NORM, "image_std": [0, 0.5, 0.5]})
    code, out, err = run(capsys, ["inspect", str(model), "--input-shape", "3,8,8"])
    assert code == 1 and "PROBLEM" in out and "std [0.0, 0.5, 0.5]" in out and "suggested config" not in out, out


def test_inspect_with_a_problem_ends_with_one_error_line(tmp_path, capsys):
    """Before: exit 1 with the PROBLEM on stdout only, and nothing on stderr (a CI log showed no reason)."""
    model = pooled_model(tmp_path / "model.onnx")
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, ["inspect", str(model), *extra])
        assert code == 1 and "--input-shape C,H,W" in error_line(err), err
    assert json.loads(out)["problem"] in error_line(err)  # --json: stdout is still the JSON alone


@pytest.mark.parametrize(
    "given, what", [("", "empty"), ("/dev/null", "not a regular file"), ("nope.json", "not found")]
)
def test_preprocessor_path_errors_say_what_the_path_is(tmp_path, capsys, given, what):
    """Before: "" was "a directory" (Path("") is the working directory) and /dev/null "not found"."""
    model, data, out = pooled_model(tmp_path / "model.onnx"), images_npz(tmp_path / "d.npz"), tmp_path / "o.tsv"
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--preprocessor", given, "--out", str(out)])
    assert code == 1 and what in error_line(err) and not out.exists(), err


def test_resample_without_resize_says_it_does_nothing(tmp_path, caplog):
    """Before: --resample nearest without --resize was accepted without a word, and changed nothing."""
    import logging

    from rs_onnx.data import load_data

    folder = image_folder(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING, logger="rs_onnx.data"):
        load_data(str(folder), resample="nearest")
    assert "--resample nearest has no effect without --resize" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rs_onnx.data"):
        load_data(str(folder), resample="nearest", resize="8x8")
    assert "no effect" not in caplog.text


def test_inspect_escapes_class_names_from_config_json(tmp_path, capsys):
    """Before: an id2label name holding a newline printed a forged "rs-onnx: error:" line of its own."""
    model = pooled_model(tmp_path / "model.onnx", dims=["N", 3, 8, 8])
    labels = {"0": "cat\nrs-onnx: error: forged\x1b[31m", "1": "b", "2": "c", "3": "d"}
    (tmp_path / "config.json").write_text(json.dumps({"id2label": labels}))
    code, out, _ = run(capsys, ["inspect", str(model)])
    assert code == 0 and "cat\\nrs-onnx: error: forged\\x1b[31m" in out
    assert not any(line.startswith("rs-onnx:") for line in out.splitlines()) and "\x1b" not in out


def test_inspect_escapes_the_producer_and_input_names(tmp_path, capsys):
    """Before: a producer or an input name holding a newline printed a forged "rs-onnx: error:" line on stdout."""
    import onnx

    model = pooled_model(tmp_path / "model.onnx", dims=["N", 3, 8, 8])
    proto = onnx.load(str(model))
    proto.producer_name = "evil\nrs-onnx: error: forged"
    evil = "px\nrs-onnx: error: forged too"
    proto.graph.node[0].input[0] = proto.graph.input[0].name = evil
    onnx.save(proto, str(model))
    code, out, _ = run(capsys, ["inspect", str(model)])
    assert code == 0 and "evil\\nrs-onnx: error: forged" in out and "px\\nrs-onnx" in out, out
    assert not any(line.startswith("rs-onnx:") for line in out.splitlines()), out


@pytest.mark.parametrize(
    "card",
    [
        {"do_resize": True, "size": {"longest_edge": 8}},  # DETR-style: a size rs-onnx cannot express
        {"do_resize": True, "size": 8, "resample": 9},
        {"do_normalize": True, "image_mean": "0.5"},
    ],
)
def test_a_card_rs_onnx_cannot_read_names_the_way_around_it(tmp_path, capsys, card):
    """Before: only JSON errors said "--preprocessor none"; an unreadable size or resample left the user stuck."""
    model, out = card_model(tmp_path, card), tmp_path / "o.tsv"
    data = image_folder(tmp_path / "imgs")
    code, _, err = run(capsys, ["certify", str(model), str(data), *CERTIFY, "--out", str(out)])
    assert code == 1 and "--preprocessor none" in error_line(err) and not out.exists(), err
    code, _, err = run(
        capsys, ["certify", str(model), str(data), *CERTIFY, "--preprocessor", "none", "--out", str(out)]
    )
    assert code == 0, err


# ------------------------------------------------------------------ the Python API's input_shape
@pytest.mark.parametrize("shape", [(3, 8.5, 8), (0, 8, 8), (-1, 8, 8), (True, 8, 8)])
def test_api_input_shape_is_checked_as_the_flag_is(tmp_path, shape):
    """Before: (3, 8.5, 8) ran silently as (3, 8, 8); 0, -1 and True failed deep in the load-time trial run."""
    from rs_onnx.classifier import OnnxClassifier
    from rs_onnx.errors import ConfigError

    model = pooled_model(tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="expected the per-example shape as positive integers"):
        OnnxClassifier(str(model), input_shape=shape)
    assert OnnxClassifier(str(model), input_shape=(3.0, 8, 8)).input_shape == (3, 8, 8)


def test_bench_resizes_image_files_as_certify_does(tmp_path, capsys):
    """Before: bench had no --resize/--center-crop, so image files of another size than a fixed-size model could
    not be benchmarked at all (certify's advice, --resize, was "No such option")."""
    model = pooled_model(tmp_path / "model.onnx", dims=["N", 3, 8, 8])
    data = image_folder(tmp_path / "imgs", size=(10, 12))
    code, out, err = run(capsys, ["bench", str(model), str(data), *BENCH])
    assert code == 1 and out == "", err
    for flags in (["--resize", "8x8"], ["--resize", "9", "--center-crop", "8"]):
        code, out, err = run(capsys, ["bench", str(model), str(data), *BENCH, *flags])
        assert code == 0 and json.loads(out)["certify_samples_per_s"] > 0, err
