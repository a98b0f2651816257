"""One schema for CLI flags and YAML files: the run configuration.

Every key of the YAML file is a field of ``RunConfig`` (flags use dashes, YAML keys underscores);
unknown keys are rejected with a suggestion. Flags given on the command line override the file.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import ConfigError, UsageError
from .guard import check_dtype, check_yaml, escape
from .noise import KINDS as NOISE_KINDS
from .preprocess import LAYOUTS, PreprocessSpec


def _load_presets() -> dict[str, dict[str, Any]]:
    """Normalisation presets (scale, mean, std) from the commented example configs in rs_onnx/presets/."""
    presets = {}
    for f in sorted(resources.files("rs_onnx").joinpath("presets").iterdir(), key=lambda t: t.name):
        if f.name.endswith(".yaml"):
            values = yaml.safe_load(f.read_text(encoding="utf-8"))
            presets[f.name[:-5]] = {k: values[k] for k in ("scale", "mean", "std")}
    return presets


PRESETS: dict[str, dict[str, Any]] = _load_presets()


@dataclass
class RunConfig:
    """Everything a certify/predict run depends on. sigma is in [0,1] pixel units."""

    model: str | None = None
    data: str | None = None
    sigma: float | None = None
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int | None = None  # None (or "auto"): probe for the fastest size on long runs
    seed: int | None = None
    device: str = "auto"
    input_name: str | None = None
    output_name: str | None = None
    preset: str | None = None
    layout: str = "auto"
    scale: float = 1.0
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    dtype: str | None = None
    start: int = 0
    end: int | None = None
    skip: int = 1
    label: int | None = None
    labels: str | None = None  # labels file for an .npy or a flat image folder (.npy, or one integer per line)
    classes: str | None = None  # class names, one per line (line number = class index), for folders and manifests
    path_column: str | None = None  # manifest column of image paths (default "path")
    label_column: str | None = None  # manifest column of labels (default "label")
    label_from_filename: bool = False  # flat image folder: label from a trailing _<digits> in each file name
    resize: int | None = None  # image files: shorter side to this many pixels (bilinear, antialiased)
    center_crop: str | None = None  # image files: crop N or HxW pixels from the centre, after --resize
    noise_threads: int | None = None
    bound: str = "cohen"
    backend: str = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    fp16: bool = False  # run a float16 conversion of the model (the certificate then covers that model)
    cuda_graph: bool = False  # CUDA: replay the model as a captured CUDA graph
    device_noise: bool = False  # CUDA: draw the noise on the GPU (Philox) instead of NumPy
    denoiser: str | None = None  # an ONNX denoiser composed in front of the model (denoised smoothing)
    extra_inputs: dict[str, Any] | None = None  # YAML only: fixed values of the model's other inputs
    sequential: bool = False  # stop sampling as soon as the radii are decided (n is then the budget)
    radii: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    precision: float | None = None  # sequential: find the radius to within this, instead of deciding radii
    looks: int = 16
    n_first: int | None = None
    final_share: float = 0.9
    futility_beta: float = 0.01
    noise: str | None = None  # gaussian, uniform or laplace (None: the model's rs_onnx.noise, else gaussian)
    audit: bool = False  # sound against an adversarial model: 8-bit inputs, exact grid noise, fresh entropy
    audit_seed_override: bool = False  # audit with a given seed (only to reproduce an earlier audit; recorded)

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            self.layout, float(self.scale), tuple(map(float, self.mean)), tuple(map(float, self.std)), self.dtype
        )

    def validate(self) -> "RunConfig":
        """Range checks shared by flags and YAML; raises ConfigError naming the key."""
        from .inputs import MAX_COUNT, MAX_SIGMA, as_int

        for key in (
            "n0",
            "n",
            "batch_size",
            "seed",
            "start",
            "end",
            "skip",
            "label",
            "noise_threads",
            "looks",
            "n_first",
            "workers",
        ):
            if getattr(self, key) is not None:
                setattr(self, key, as_int(key, getattr(self, key)))  # 1.5 is refused, never truncated
                if key != "seed" and abs(getattr(self, key)) > MAX_COUNT:
                    raise UsageError(
                        f"{key}={getattr(self, key)}: more than the int64 counters hold; expected at most {MAX_COUNT:,}"
                    )
        if self.n + self.n0 > MAX_COUNT:
            raise UsageError(
                f"n0 + n = {self.n0 + self.n}: more than the int64 counters hold; expected at most {MAX_COUNT:,}"
            )
        checks = [
            (
                self.sigma is None or 0 < self.sigma <= MAX_SIGMA,
                "sigma",
                self.sigma,
                f"a positive noise level in [0,1] pixel units, at most {MAX_SIGMA:g}",
            ),
            (self.n0 >= 1, "n0", self.n0, "at least 1"),
            (self.n >= 1, "n", self.n, "at least 1"),
            (0 < self.alpha < 1, "alpha", self.alpha, "0 < alpha < 1"),
            (
                self.batch_size is None or 1 <= self.batch_size <= 10_000_000,
                "batch_size",
                self.batch_size,
                "auto or 1 to 10,000,000",
            ),
            (self.seed is None or self.seed >= 0, "seed", self.seed, "a non-negative integer"),
            (self.start >= 0, "start", self.start, "a non-negative index"),
            (self.end is None or self.end >= self.start, "end", self.end, f"an index >= start ({self.start})"),
            (self.skip >= 1, "skip", self.skip, "at least 1"),
            (self.layout in LAYOUTS, "layout", self.layout, "one of " + ", ".join(LAYOUTS)),
            (self.preset is None or self.preset in PRESETS, "preset", self.preset, "one of " + ", ".join(PRESETS)),
            (self.bound in ("cohen", "best"), "bound", self.bound, "cohen or best"),
            (self.backend in ("local", "ray"), "backend", self.backend, "local or ray"),
            (not (self.sequential and self.bound != "cohen"), "bound", self.bound, "cohen with --sequential"),
            (self.precision is None or self.precision > 0, "precision", self.precision, "a positive radius step"),
            (self.looks >= 1, "looks", self.looks, "at least 1"),
            (0 < self.final_share < 1, "final_share", self.final_share, "0 < final_share < 1"),
            (0 < self.futility_beta < 1, "futility_beta", self.futility_beta, "0 < futility_beta < 1"),
            (
                all(np.isfinite(r) and r >= 0 for r in self.radii) and len(self.radii) > 0,
                "radii",
                self.radii,
                "non-negative radii in [0,1] pixel units",
            ),
            (self.workers is None or self.workers >= 1, "workers", self.workers, "at least 1"),
            (
                self.gpus_per_worker is None or self.gpus_per_worker >= 0,
                "gpus_per_worker",
                self.gpus_per_worker,
                "0 or more (fractions share a GPU)",
            ),
            (
                self.cpus_per_worker is None or self.cpus_per_worker > 0,
                "cpus_per_worker",
                self.cpus_per_worker,
                "a positive number",
            ),
            (self.noise_threads is None or self.noise_threads >= 0, "noise_threads", self.noise_threads, "0 or more"),
            (self.noise is None or self.noise in NOISE_KINDS, "noise", self.noise, "one of " + ", ".join(NOISE_KINDS)),
            (self.resize is None or 1 <= self.resize <= 65535, "resize", self.resize, "a size in pixels, 1 to 65535"),
        ]
        checks += [
            (
                not (self.audit and self.seed is not None and not self.audit_seed_override),
                "seed",
                self.seed,
                (
                    "no seed with audit (a model can memorise a published seed's noise; fresh entropy is drawn after "
                    "the model is loaded and recorded), or --audit-seed-override to reproduce an earlier audit"
                ),
            ),
            (
                not (self.audit_seed_override and not self.audit),
                "audit_seed_override",
                self.audit_seed_override,
                "false without audit",
            ),
            (
                not (self.audit and self.device_noise),
                "device_noise",
                self.device_noise,
                "false with audit (on-device float noise is readable by the model's arithmetic)",
            ),
            (
                not (self.audit and self.noise not in (None, "gaussian")),
                "noise",
                self.noise,
                "gaussian with audit (the audit's exact grid noise is Gaussian)",
            ),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise ConfigError(f"{key}={value}: expected {expected}")
        if self.dtype is not None:
            self.dtype = check_dtype(self.dtype)
        self.preprocess_spec()  # checks scale, mean and std
        if self.center_crop is not None:
            from .data import parse_crop
            from .errors import DataError

            try:
                parse_crop(self.center_crop)
            except DataError as e:
                raise ConfigError(str(e).replace("--center-crop", "center_crop", 1)) from None
        return self

    def apply_preset(self, explicit: set[str]) -> None:
        """Fill mean/std/scale from the preset unless given explicitly."""
        if self.preset:
            if self.preset not in PRESETS:
                raise ConfigError(f"preset={self.preset}: expected one of {', '.join(PRESETS)}")
            for key, value in PRESETS[self.preset].items():
                if key not in explicit:
                    setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Check a YAML value's type against the field's annotation."""
    kind = str(_FIELDS[key].type)
    if key == "batch_size" and value == "auto":
        return None
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"config key {key!r} is empty; expected a value ({kind})")
    if kind.startswith("dict"):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config key {key!r} = {value!r}; expected a mapping of input names to values")
        return value
    if kind.startswith("list"):
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"config key {key!r} = {value!r}; expected a number or a list of numbers")
        return [float(v) for v in values]
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} = {value!r}; expected true or false")
        return value
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} = {value!r}; expected an integer")
        return value
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} = {value!r}; expected a number")
        return float(value)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"config key {key!r} = {value!r}; expected a string")
    return str(value)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config (safe_load): a mapping of RunConfig keys; unknown keys are rejected."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {escape(path)}: not found")
    try:
        data = path.read_bytes()
        check_yaml(data, path)
        raw = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: holds a {type(raw).__name__}; expected a mapping of keys to values")
    out = {}
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(_FIELDS)}"
            raise ConfigError(f"config file {path}: unknown key {key!r}{hint}")
        out[key] = _coerce(key, value)
    return out


def build_config(yaml_values: dict[str, Any], flags: dict[str, Any]) -> tuple[RunConfig, set[str]]:
    """RunConfig from YAML values overridden by explicitly given flags; returns it and the explicit keys."""
    values = {**yaml_values, **{k: v for k, v in flags.items() if k in _FIELDS}}
    cfg = RunConfig(**values)
    explicit = set(values)
    cfg.apply_preset(explicit)
    return cfg.validate(), explicit


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
