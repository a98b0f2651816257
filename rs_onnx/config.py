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

from .boundaries import FINAL_SHARE, LOOKS, MAX_LOOKS
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


CHOICE_KEYS = ("noise", "preset", "layout", "backend", "guess", "bound")
"""Keys whose value is one of a list of lower-case words: any case is taken, from flags and YAML alike."""


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
    input_shape: list[int] | None = None  # per-example input shape, no batch dim (3,224,224): fills symbolic dims
    preset: str | None = None
    layout: str = "auto"
    scale: float = 1.0
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    dtype: str | None = None
    channel_order: str = "rgb"  # bgr: reverse the image's R, G, B before mean/std (OpenCV/Caffe-style models)
    start: int = 0
    end: int | None = None
    skip: int = 1
    label: int | None = None
    labels: str | None = None  # labels file for an .npy or a flat image folder (.npy, or one integer per line)
    classes: str | None = None  # class names, one per line (line number = class index), for folders and manifests
    path_column: str | None = None  # manifest column of image paths (default "path")
    label_column: str | None = None  # labels column: manifest (default "label"); features table: name or index
    label_from_filename: bool = False  # flat image folder: label from a trailing _<digits> in each file name
    resize: int | str | None = None  # image files: shorter side to N pixels, or HxW exactly (bilinear, antialiased)
    center_crop: str | None = None  # image files: crop N or HxW pixels from the centre, after --resize
    resample: str = "bilinear"  # image files: the resize's filter (bilinear, bicubic, nearest, lanczos, box, hamming)
    preprocessor: str | None = None  # a preprocessor_config.json (default: the one beside the model; none: ignore)
    noise_threads: int | None = None
    bound: str = "cohen"
    backend: str = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    stall_timeout: float | None = None  # Ray: seconds a worker may finish nothing before its work moves (None: auto)
    fp16: bool = False  # run a float16 conversion of the model (the certificate then covers that model)
    cuda_graph: bool = False  # CUDA: replay the model as a captured CUDA graph
    device_noise: bool | None = None  # CUDA: noise drawn on the GPU (Philox); None: on for inputs >= 100,000 values
    cudnn_algo_search: str | None = None  # CUDA: EXHAUSTIVE, HEURISTIC or DEFAULT (None: onnxruntime's, EXHAUSTIVE)
    prefer_nhwc: bool = False  # CUDA: the provider's NHWC kernels (fp16 tensor cores want them)
    tensorrt: bool = False  # CUDA: onnxruntime's TensorRT provider first, when libnvinfer.so.10 is present
    denoiser: str | None = None  # an ONNX denoiser composed in front of the model (denoised smoothing)
    extra_inputs: dict[str, Any] | None = None  # YAML only: fixed values of the model's other inputs
    sequential: bool = False  # stop sampling as soon as the radii are decided (n is then the budget)
    radii: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # 0: decide predict too
    precision: float | None = None  # sequential: find the radius to within this, instead of deciding radii
    looks: int = LOOKS  # sequential: planned looks, geometric from first_look to n
    first_look: int | None = None  # sequential: estimation samples at the first look (default 10)
    final_share: float = FINAL_SHARE  # sequential: share of alpha for the calibrated last look
    futility_beta: float = 0.01
    guess: str = "select"  # sequential: the class to certify: select (from samples) or label (the example's)
    budget: int | None = None  # sequential: most samples over all examples of the run (breadth-first looks)
    noise: str | None = None  # gaussian, uniform or laplace (None: the model's rs_onnx.noise, else gaussian)
    audit: bool = False  # sound against an adversarial model: 8-bit inputs, exact grid noise, fresh entropy
    audit_seed_override: bool = False  # audit with a given seed (only to reproduce an earlier audit; recorded)

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            self.layout,
            float(self.scale),
            tuple(map(float, self.mean)),
            tuple(map(float, self.std)),
            self.dtype,
            self.channel_order,
        )

    def validate(self) -> "RunConfig":
        """Range checks shared by flags and YAML; raises ConfigError naming the key."""
        from .inputs import MAX_COUNT, MAX_SIGMA, as_int

        self._lower_choices()
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
            "first_look",
            "budget",
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
            (
                self.precision is None or (np.isfinite(self.precision) and self.precision > 0),
                "precision",
                self.precision,
                "a positive radius step",
            ),
            (1 <= self.looks <= MAX_LOOKS, "looks", self.looks, f"1 to {MAX_LOOKS:,}"),
            (
                self.first_look is None or 1 <= self.first_look <= self.n,
                "first_look",
                self.first_look,
                f"1 to n={self.n}",
            ),
            (self.guess in ("select", "label"), "guess", self.guess, "select or label"),
            (self.guess == "select" or self.sequential, "guess", self.guess, "select without --sequential"),
            (self.guess == "select" or self.backend == "local", "guess", self.guess, "select with --backend ray"),
            (self.budget is None or self.budget >= 1, "budget", self.budget, "a positive number of samples"),
            (self.budget is None or self.sequential, "budget", self.budget, "no budget without --sequential"),
            (self.budget is None or self.backend == "local", "budget", self.budget, "no budget with --backend ray"),
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
            (
                self.stall_timeout is None or (np.isfinite(self.stall_timeout) and self.stall_timeout > 0),
                "stall_timeout",
                self.stall_timeout,
                "a positive number of seconds",
            ),
            (self.noise_threads is None or self.noise_threads >= 0, "noise_threads", self.noise_threads, "0 or more"),
            (self.noise is None or self.noise in NOISE_KINDS, "noise", self.noise, "one of " + ", ".join(NOISE_KINDS)),
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
        if self.cudnn_algo_search is not None:
            from .devices import parse_algo_search

            self.cudnn_algo_search = parse_algo_search(self.cudnn_algo_search)
        self._check_shapes()
        self.preprocess_spec()  # checks scale, mean and std
        if self.center_crop is not None:
            from .data import parse_crop
            from .errors import DataError

            try:
                parse_crop(self.center_crop)
            except DataError as e:
                raise ConfigError(str(e).replace("--center-crop", "center_crop", 1)) from None
        return self

    def _check_shapes(self) -> None:
        """input_shape, channel_order, resize and resample in their one form (case, separators); names the key."""
        from .data import RESAMPLING, parse_resize
        from .errors import DataError
        from .preprocess import CHANNEL_ORDERS
        from .shapes import parse_input_shape

        resample = str(self.resample).strip().lower()
        if resample not in RESAMPLING:
            raise ConfigError(f"resample={self.resample}: expected one of {', '.join(RESAMPLING)}")
        self.resample = resample
        order = str(self.channel_order).strip().lower()
        if order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order={self.channel_order}: expected one of {', '.join(CHANNEL_ORDERS)}")
        self.channel_order = order
        if self.input_shape is not None:
            name, dims = parse_input_shape(self.input_shape)
            if name is not None and self.input_name not in (None, name):
                raise ConfigError(
                    f"input_shape names input '{name}' and input_name is '{self.input_name}'; expected the same input"
                )
            self.input_name = self.input_name or name
            self.input_shape = dims
        if self.resize is not None:
            try:
                size = parse_resize(self.resize)
            except DataError:
                raise ConfigError(
                    f"resize={self.resize}: expected the shorter side N in pixels (e.g. 256) or HxW (e.g. 224x224, "
                    "stretched to exactly that size), 1 to 65535"
                ) from None
            self.resize = size if isinstance(size, int) or size is None else f"{size[0]}x{size[1]}"

    def _lower_choices(self) -> None:
        """YAML as the flags: `noise: Gaussian` is `--noise gaussian` (the keys of :data:`CHOICE_KEYS`)."""
        for key in CHOICE_KEYS:
            if isinstance(getattr(self, key), str):
                setattr(self, key, getattr(self, key).strip().lower())

    def apply_preset(self, explicit: set[str]) -> None:
        """Fill mean/std/scale from the preset unless given explicitly."""
        self._lower_choices()
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
    if key in ("input_shape", "resize") and isinstance(value, (str, int, list)) and not isinstance(value, bool):
        return value  # parsed by RunConfig.validate (one parser for flags and YAML)
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
    """RunConfig from YAML values overridden by explicitly given flags; returns it and the explicit keys.

    Layers, first wins: flags, YAML, the preset, the model's card (rs_onnx.modelcard: the
    preprocessor_config.json beside the model, or what its graph implies), the defaults."""
    from .modelcard import card_values

    values = {**yaml_values, **{k: v for k, v in flags.items() if k in _FIELDS}}
    cfg = RunConfig(**values)
    explicit = set(values)
    cfg.apply_preset(explicit)
    preset_keys = set(PRESETS[cfg.preset]) if cfg.preset in PRESETS else set()
    card = card_values(cfg.model, cfg.preprocessor, explicit | preset_keys, cfg.input_name, cfg.data)
    if card:
        check_card({k: v for k, v in card.items() if k != "preprocessor"}, card.get("preprocessor") or cfg.preprocessor)
        cfg = RunConfig(**{**cfg.to_dict(), **card})
    return cfg.validate(), explicit


def check_card(values: dict[str, Any], source: str | None) -> None:
    """A model card's values (rs_onnx.modelcard) checked on their own, so that a bad one (std 0 or NaN, a 2-value
    mean for a 3-value std, a resize beyond 65535) is refused naming the card, not as if a flag had given it."""
    try:
        RunConfig(**values).validate()
    except ConfigError as e:
        where = f"preprocessor config {escape(source)}" if source else "the model's graph"
        raise ConfigError(f"{where}: {e} (the values it gives; --preprocessor none ignores it)") from None


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
