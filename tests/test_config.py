"""One schema for flags and YAML: types, ranges, unknown keys, presets."""

import pytest

from rs_onnx.config import build_config, load_yaml
from rs_onnx.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_values_and_flag_override(tmp_path):
    values = load_yaml(write(tmp_path, "sigma: 0.5\nn: 2000\nbatch-size: 100\nmean: [0.1, 0.2, 0.3]\n"))
    cfg, explicit = build_config(values, {"n": 500})
    assert cfg.sigma == 0.5 and cfg.n == 500 and cfg.batch_size == 100 and cfg.mean == [0.1, 0.2, 0.3]
    assert {"sigma", "n", "batch_size", "mean"} <= explicit


def test_unknown_key_gets_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'sigm'.*did you mean 'sigma'"):
        load_yaml(write(tmp_path, "sigm: 0.5\n"))


@pytest.mark.parametrize(
    "text,match",
    [
        ("n: many\n", "expected an integer"),
        ("sigma: [1, 2]\n", "expected a number"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("sigma: 0.5: 3\n", "not valid YAML"),
        ("mean: [a, b]\n", "list of numbers"),
    ],
)
def test_bad_yaml(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_yaml(write(tmp_path, text))


@pytest.mark.parametrize(
    "flags,match",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"n": 0}, "n=0"),
        ({"n0": -1}, "n0"),
        ({"alpha": 1.0}, "alpha"),
        ({"batch_size": 0}, "batch_size"),
        ({"preset": "svhn"}, "preset"),
        ({"std": [0.0]}, "std"),
    ],
)
def test_ranges(flags, match):
    with pytest.raises(ConfigError, match=match):
        build_config({}, flags)


def test_preset_fills_mean_std_unless_given():
    cfg, _ = build_config({}, {"preset": "cifar10"})
    assert cfg.mean == [0.4914, 0.4822, 0.4465]
    cfg, _ = build_config({}, {"preset": "cifar10", "mean": [0.5]})
    assert cfg.mean == [0.5] and cfg.std == [0.2471, 0.2435, 0.2616]


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar10-cohen", "imagenet", "none"])
def test_every_example_config_is_valid_and_commented(name):
    from importlib import resources

    f = resources.files("rs_onnx") / "presets" / f"{name}.yaml"
    cfg, _ = build_config(load_yaml(f), {})
    assert cfg.preset == name
    lines = [line for line in f.read_text().splitlines() if line and not line.startswith("#")]
    assert sum("#" in line for line in lines) >= 3  # keys are explained


def test_yaml_choices_take_any_case_as_the_flags_do(tmp_path, capsys):
    """`noise: Gaussian` in YAML is `--noise Gaussian` on the command line (before, only the flag took it)."""
    import yaml

    from rs_onnx.cli import _main

    config = tmp_path / "c.yaml"
    config.write_text("noise: Gaussian\nguess: LABEL\nsequential: true\nlayout: NCHW\npreset: MNIST\nbound: Cohen\n")
    code = _main(["certify", "--config", str(config), "--dump-config"], False)
    out = capsys.readouterr().out
    assert code == 0, out
    dumped = yaml.safe_load(out)
    assert (dumped["noise"], dumped["guess"], dumped["layout"], dumped["preset"], dumped["bound"]) == (
        "gaussian",
        "label",
        "nchw",
        "mnist",
        "cohen",
    )
    config.write_text("noise: Gauss\n")
    assert _main(["certify", "--config", str(config), "--dump-config"], False) != 0
