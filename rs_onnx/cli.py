"""The ``rs-onnx`` command line: parse, call the API, render. Logs and progress go to stderr."""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from pathlib import Path

import click

from ._version import __version__
from .errors import OutputError, RsOnnxError
from .guard import check_path_name, escape, quiet_onnxruntime, quiet_warnings
from .outputs import WriteError, check_not_inputs, check_regular, check_run_paths, count_rows, finished_rows
from .results import columns_for
from .stopping import Terminated, signals_stop_runs

log = logging.getLogger("rs_onnx")

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
# The embedded default: the bundled digits model on every 10th bundled digit, about a minute on 2 CPU cores.
DEFAULT_RUN = {"n0": 100, "n": 10_000, "alpha": 0.001, "skip": 10, "seed": 0}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))  # untrusted names in a log line cannot start a new line


def _setup_logging(quiet: bool, debug: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("rs-onnx: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)


def _version_text() -> str:
    """Versions from the installed packages' metadata (nothing heavy is imported: --version stays fast);
    a warning when several onnxruntime builds clash. ``rs-onnx doctor`` probes the providers."""
    from importlib.metadata import PackageNotFoundError, version

    from .doctor import onnxruntime_conflict, onnxruntime_distributions

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    builds = onnxruntime_distributions()
    ort = ", ".join(f"{n} {ver}" for n, ver in builds) if builds else "onnxruntime not installed"
    conflict = onnxruntime_conflict()
    return (
        f"rs-onnx {__version__}\n{ort}\nnumpy {v('numpy')}\nPython {sys.version.split()[0]}\n"
        "`rs-onnx doctor` lists the execution providers that really work here"
        + (f"\nwarning: {conflict}" if conflict else "")
    )


# ------------------------------------------------------------------ conventions shared by every command

GLOBAL_FLAGS = ("-q", "--quiet", "--debug")
"""Flags of the group that are also accepted after the subcommand (``rs-onnx certify ... -q``)."""


class RsOnnxGroup(click.Group):
    """A click group that takes its global flags anywhere on the line (before a ``--``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        head, sep, tail = (
            (args[: args.index("--")], ["--"], args[args.index("--") + 1 :]) if "--" in args else (list(args), [], [])
        )
        moved = [a for a in head if a in GLOBAL_FLAGS]
        return super().parse_args(ctx, moved + [a for a in head if a not in GLOBAL_FLAGS] + sep + tail)


class Choice(click.Choice):
    """A case-insensitive choice (``--layout NHWC`` is ``nhwc``); the value is the choice as listed."""

    def __init__(self, choices, case_sensitive: bool = False) -> None:
        super().__init__(list(choices), case_sensitive=case_sensitive)


class NumberList(click.ParamType):
    """Numbers given as a comma- (or space-) separated list: ``0.485,0.456,0.406``; with ``multiple=True``
    (see :func:`list_option`) repeated flags and lists mix freely."""

    name = "numbers"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return tuple(float(v) for v in value)
        if isinstance(value, (int, float)):
            return (float(value),)
        parts = [t for t in re.split(r"[,\s]+", str(value).strip()) if t]
        try:
            numbers = tuple(float(t) for t in parts)
        except ValueError:
            numbers = ()
        if not numbers:
            self.fail(f"{value!r}: expected numbers, comma-separated (0.5,0.4) or one per repeated flag", param, ctx)
        return numbers


def _flatten(ctx, param, value):
    return tuple(x for part in value or () for x in part)


def list_option(*decls, **kwargs):
    """An option taking numbers as repeated flags and/or comma-separated lists; its value is a flat tuple."""
    return click.option(*decls, type=NumberList(), multiple=True, callback=_flatten, **kwargs)


DTYPES = ("float32", "float16", "float64", "uint8", "int8", "uint16", "int16", "int32", "int64")
"""Model input dtypes the preprocessing can cast to (numpy names)."""


def _layouts() -> list[str]:
    return ["auto", "nchw", "nhwc", "flat"]  # rs_onnx.preprocess.LAYOUTS, without importing numpy for --help


def _presets() -> list[str]:
    from importlib import resources

    return sorted(
        f.name[:-5] for f in resources.files("rs_onnx").joinpath("presets").iterdir() if f.name.endswith(".yaml")
    )


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_text())
        ctx.exit()


@click.group(
    cls=RsOnnxGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Versions of rs-onnx, onnxruntime, numpy, and the execution providers that really work.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or info logs.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, debug: bool) -> None:
    """Certify the l2 robustness of any ONNX classifier by randomized smoothing (Cohen et al. 2019).

    -q and --debug go before or after the command; choices are case-insensitive; number lists
    (--mean, --std, --radii) take repeated flags or commas (--mean 0.485,0.456,0.406); --out - is stdout.
    """
    ctx.obj = {"quiet": quiet, "debug": debug}
    _setup_logging(quiet, debug)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _run_options(f):
    """Options shared by certify and predict; each is also a YAML key (dashes become underscores)."""
    options = [
        click.argument("model", required=False),
        click.argument("data", required=False),
        click.option("--config", "config_path", type=click.Path(), help="YAML file with any of these options."),
        click.option(
            "--sigma",
            type=float,
            help="Noise scale in [0,1] pixel units: the std (gaussian), the half-width "
            "lambda (uniform), the scale lambda (laplace) (default: the model's rs_onnx.sigma).",
        ),
        click.option(
            "--noise",
            type=click.Choice(["gaussian", "uniform", "laplace"]),
            help="Smoothing noise (default: the model's rs_onnx.noise, else gaussian); gaussian certifies l2, "
            "uniform and laplace l1 (column radius; radius_l1/_l2/_linf in every norm).",
        ),
        click.option("--n", "n", type=int, help="Samples for the estimate (default 100000)."),
        click.option("--alpha", type=float, help="Failure probability of each answer (default 0.001)."),
        click.option(
            "--batch-size",
            help="Noisy samples per model call, or auto (default: the fastest size from "
            "a short probe, on runs of 200,000 samples or more; else 1000, fewer for inputs over 64 KiB; "
            "always within the memory available).",
        ),
        click.option("--seed", type=int, help="Seed of all noise; without it fresh entropy is drawn and recorded."),
        click.option("--device", help="auto | cpu | cuda | cuda:N (default auto: CUDA when it really works)."),
        click.option("--input-name", help="Model input to feed (needed when there are several)."),
        click.option("--output-name", help="Model output holding the class scores (needed when ambiguous)."),
        click.option(
            "--input-shape",
            help="Per-example input shape, no batch dim (3,224,224), for symbolic dims the data cannot fill "
            "(default: the data's shape).",
        ),
        click.option("--preset", type=Choice(_presets()), help="Normalisation preset (values: docs/cli.md, Presets)."),
        click.option("--layout", type=Choice(_layouts()), help="Model input layout."),
        click.option("--scale", type=float, help="Multiply x by this first (255 for models taking 0..255)."),
        list_option("--mean", help="Per-channel mean, scaled units (0.485,0.456,0.406 or one flag per channel)."),
        list_option("--std", help="Per-channel std, scaled units (0.229,0.224,0.225 or one flag per channel)."),
        click.option("--dtype", help="Model input dtype (default: the model's; integers are rounded and clipped)."),
        click.option(
            "--channel-order",
            type=Choice(["rgb", "bgr"]),
            help="bgr: reverse the images' R, G, B before mean/std (OpenCV/Caffe-style models; default rgb).",
        ),
        click.option(
            "--preprocessor",
            help="A Hugging Face preprocessor_config.json to take scale/mean/std/resize/crop/channel order from "
            "(default: the one beside MODEL; none: ignore it). Flags override it.",
        ),
        click.option("--start", type=int, help="First example index."),
        click.option("--end", type=int, help="Stop before this example index."),
        click.option("--skip", type=int, help="Take every skip-th example."),
        click.option(
            "--label",
            type=int,
            help="Label of a single image file given as DATA (or of every image at the top of a folder).",
        ),
        click.option(
            "--labels",
            help="Labels of an .npy DATA or of the images at the top of a folder: an .npy of "
            "integers or a text file with one integer per line.",
        ),
        click.option(
            "--classes",
            help="Class names, one per line (line number = the model's class index): names "
            "the class subfolders of a folder, or the labels of a manifest (e.g. ImageNet's synset list).",
        ),
        click.option("--path-column", help="Manifest column holding image paths (default path)."),
        click.option(
            "--label-column",
            help="Column holding labels: a manifest's (default label), or a features table's name or "
            "0-based index (default: the column 'label', else the last).",
        ),
        click.option(
            "--label-from-filename",
            is_flag=True,
            default=None,
            help="Images at the top of a folder: label from a trailing _<digits> in the file name.",
        ),
        click.option(
            "--resize",
            help="Image files: shorter side to N pixels, aspect kept, or HxW (224x224) exactly (bilinear, "
            "antialiased, as torchvision's Resize).",
        ),
        click.option(
            "--resample",
            type=Choice(["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"]),
            help="Image files: the filter of --resize (default bilinear; Hugging Face cards often say bicubic).",
        ),
        click.option(
            "--center-crop",
            help="Image files: crop N or HxW pixels from the centre, after --resize "
            "(ImageNet: --resize 256 --center-crop 224).",
        ),
        click.option(
            "--noise-threads",
            type=int,
            help="Threads drawing noise (default: CPU model, a quarter of the cores, 2 to 8; CUDA, all cores but one, at most 16).",
        ),
        click.option(
            "--backend",
            type=Choice(["local", "ray"]),
            help="Where to sample: this process (default) or Ray workers (pip install 'rs-onnx[distributed]').",
        ),
        click.option(
            "--address",
            help="Ray cluster: auto, host:6379, ray://host:10001, or none for a local Ray instance "
            "(joined before any file is written; refused if unreachable).",
        ),
        click.option("--workers", type=int, help="Ray workers (default: one per GPU, else one per CPU)."),
        click.option("--gpus-per-worker", type=float, help="GPUs per Ray worker (fractions share a GPU)."),
        click.option("--cpus-per-worker", type=float, help="CPUs per Ray worker."),
        click.option(
            "--stall-timeout",
            type=float,
            help="Ray: seconds a worker may finish nothing before its work goes to the others; the run ends "
            "(resumable) when none can take over (default: 10x the slowest group so far, at least 60).",
        ),
        click.option(
            "--fp16",
            is_flag=True,
            default=None,
            help="Run a float16 conversion of the model (float32 I/O); the certificate covers that model.",
        ),
        click.option("--cuda-graph", is_flag=True, default=None, help="CUDA: replay the model as a CUDA graph."),
        click.option(
            "--device-noise/--no-device-noise",
            default=None,
            help="CUDA: draw the noise on the GPU (Philox, not reproducible from --seed); refused on CPU. "
            "Default: on for inputs of 100,000 values or more on CUDA (ImageNet size), else host noise.",
        ),
        click.option(
            "--cudnn-algo-search",
            type=Choice(["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]),
            help="CUDA: how cuDNN picks convolution algorithms (default: onnxruntime's, EXHAUSTIVE); "
            "not applicable on CPU (recorded so).",
        ),
        click.option(
            "--prefer-nhwc",
            is_flag=True,
            default=None,
            help="CUDA: the provider's NHWC convolutions (tensor cores with --fp16); not applicable on CPU.",
        ),
        click.option(
            "--tensorrt",
            is_flag=True,
            default=None,
            help="CUDA: onnxruntime's TensorRT provider first when libnvinfer.so.10 is present (else CUDA, "
            "with a warning).",
        ),
        click.option(
            "--denoiser",
            help="An ONNX denoiser to compose in front of MODEL (denoised smoothing); "
            "the preprocessing flags then describe MODEL's input.",
        ),
        click.option(
            "--audit",
            is_flag=True,
            default=None,
            help="Sound against an adversarial model: 8-bit inputs, exact grid noise added in integers, "
            "rows provably independent, fresh entropy (no --seed). See docs/audit.md.",
        ),
        click.option(
            "--audit-seed-override",
            is_flag=True,
            default=None,
            help="With --audit: accept --seed, to reproduce an earlier audit from its recorded entropy.",
        ),
        click.option("--out", type=click.Path(), help="TSV to write (and <out>.meta.json); - or none: stdout."),
        click.option(
            "--json", "as_json", is_flag=True, help="Print the run's summary as JSON on stdout (needs --out)."
        ),
        click.option("--resume", is_flag=True, help="Continue an interrupted run into the same --out."),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Start over on an --out that holds rows (they are replaced once the new run has its first row).",
        ),
        click.option("--dump-config", is_flag=True, help="Print the resolved configuration as YAML and exit."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _config(ctx: click.Context, mode: str, kwargs: dict):
    from .config import build_config, load_yaml
    from .run import bundled

    for key, what in (
        ("config_path", "--config"),
        ("model", "MODEL"),
        ("data", "DATA"),
        ("denoiser", "--denoiser"),
        ("preprocessor", "--preprocessor"),
    ):
        if kwargs.get(key):
            check_path_name(kwargs[key], what)
    yaml_values = load_yaml(kwargs["config_path"]) if kwargs.get("config_path") else {}
    flags = {}
    if kwargs.get("batch_size") is not None:
        text = kwargs["batch_size"].strip().lower()
        if text != "auto" and not re.fullmatch(r"-?[0-9]{1,30}", text):
            raise click.UsageError(f"--batch-size {kwargs['batch_size']!r}: expected a positive integer or auto")
        kwargs["batch_size"] = None if text == "auto" else int(text)
    for key, value in kwargs.items():
        if key in ("config_path", "out", "resume", "overwrite", "dump_config", "as_json"):
            continue
        source = ctx.get_parameter_source(key)
        if value not in (None, ()) and source is not click.core.ParameterSource.DEFAULT:
            flags[key] = list(value) if isinstance(value, tuple) else value
    default_run = not flags.get("model") and not yaml_values.get("model")
    if default_run:
        if flags.get("data") or yaml_values.get("data"):
            raise click.UsageError("DATA given without MODEL; expected both, or neither for the bundled default")
        yaml_values = {
            **DEFAULT_RUN,
            **yaml_values,
            "model": bundled("digits_cnn.onnx"),
            "data": bundled("digits_eval.npz"),
        }
        if (flags.get("audit") or yaml_values.get("audit")) and "seed" not in flags:
            yaml_values.pop("seed")  # audit draws fresh entropy: the default run's seed 0 is not used
        log.info(
            "no model given: certifying the bundled digits model on every 10th bundled digit (n=%d)", yaml_values["n"]
        )
    elif not (flags.get("data") or yaml_values.get("data")):
        raise click.UsageError(
            "MODEL given without DATA; expected DATA after the model (an .npz, .npy, "
            "folder, .csv/.tsv manifest or image file)"
        )
    cfg, _ = build_config(yaml_values, flags)
    if cfg.alpha > 0.5:
        log.warning(
            "alpha=%g: each answer may be wrong with probability up to %g; expected a small failure "
            "probability such as 0.001",
            cfg.alpha,
            cfg.alpha,
        )
    for value, what in ((cfg.model, "model"), (cfg.data, "data"), (cfg.denoiser, "denoiser")):
        if value:  # also when they come from the YAML file
            check_path_name(value, what)
    return cfg, default_run


def _done_before(out: Path | None, resume: bool, indices: list[int], mode: str, sequential: bool) -> int:
    """Examples of ``indices`` already in ``out`` (complete rows) when resuming; for the progress. Read before
    the run takes its lock, so without changing the file; a file the run will refuse counts 0."""
    if not (resume and out and out.is_file()):
        return 0
    try:
        done = finished_rows(out, columns_for(mode, sequential), mode)
    except (OSError, OutputError):
        return 0
    return len(set(done) & set(indices))


def _execute(ctx: click.Context, mode: str, kwargs: dict) -> None:
    from . import run as runmod
    from .config import dump_yaml
    from .distributed import backend_from_config

    warnings = _WarningCollector()  # from the start: warnings about the configuration are recorded too
    log.addHandler(warnings)
    try:
        cfg, default_run = _config(ctx, mode, kwargs)
    finally:
        log.removeHandler(warnings)
    quiet_onnxruntime(ctx.obj["debug"])
    if kwargs.get("out") and kwargs["out"] != "-":  # room for the sibling files the run writes: <out>.meta.json.tmp
        check_path_name(kwargs["out"], "--out", reserve=len(".meta.json.tmp"))
    if kwargs["dump_config"]:
        click.echo(dump_yaml(cfg), nl=False)
        return
    if kwargs.get("out") and kwargs["out"] != "-":  # a device, FIFO, socket or stdout: refused before anything opens it
        check_run_paths(Path(kwargs["out"]))
    to_stdout = kwargs.get("out") == "-"
    out = Path(kwargs["out"]) if kwargs.get("out") and not to_stdout else None
    if default_run and out is None and not to_stdout:
        out = Path(f"rs-onnx-default-{mode}.tsv")
        log.info("writing %s (and its .meta.json); `rs-onnx analyze %s` reads it", out, out)
    if kwargs["resume"] and out is None:
        raise click.UsageError("--resume needs --out (the TSV of the run to continue)")
    if cfg.backend == "ray" and _ray_missing():  # refused now, before any output file exists
        raise RsOnnxError("--backend ray: Ray is not installed; expected pip install 'rs-onnx[distributed]'")
    backend = backend_from_config(cfg)
    if backend is not None:  # a wrong --address is refused now, in seconds, before the model is even loaded
        backend.check_reachable()
    if kwargs.get("as_json") and out is None:
        raise click.UsageError("--json needs --out FILE: without a file the rows themselves go to stdout")
    log.addHandler(warnings)
    try:
        _run(ctx, mode, kwargs, cfg, out, runmod, backend, warnings)
    finally:
        log.removeHandler(warnings)


class _WarningCollector(logging.Handler):
    """Keeps the warnings logged during a run, to record them in its meta.json (the report shows them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)

    def record(self, out: Path | None) -> None:
        """Add the warnings to ``out``'s meta.json (atomically), keeping those of earlier runs (--resume)."""
        if not (out and self.messages):
            return
        from .results import meta_path, write_json_atomic

        mp = meta_path(out)
        try:
            meta = json.loads(mp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(meta, dict):
            old = [str(w) for w in meta.get("warnings") or []]
            meta["warnings"] = old + [m for m in self.messages if m not in old]
            write_json_atomic(mp, meta)


def _run(ctx, mode, kwargs, cfg, out, runmod, backend, warnings: _WarningCollector) -> None:
    from .progress import Progress

    p = runmod.prepare(cfg)
    per_example = (cfg.n0 + cfg.n) if mode == "certify" else cfg.n  # an upper bound in sequential mode
    rows = _Computed(keep=out is None)  # without --out, the summary is made from this run's rows
    bar = Progress(
        mode,
        len(p.indices),
        _done_before(out, kwargs["resume"], p.indices, mode, p.cfg.sequential),
        enabled=not ctx.obj["quiet"],
        samples_per_example=per_example,
    )

    def on_rows(new: list[dict]) -> None:
        rows.add(new)
        bar.examples(len(new))

    def resume_hint() -> str:
        if out is None or not out.exists() or count_rows(out) == 0:
            return ""
        return f"; finished rows are in {out}: run the same command with --resume to continue"

    try:
        meta = runmod.execute(
            p,
            mode,
            out,
            resume=kwargs["resume"],
            overwrite=kwargs["overwrite"],
            on_rows=on_rows,
            progress=bar.samples,
            stream=None if out else sys.stdout,
            backend=backend,
            inputs={"--config": kwargs.get("config_path")},
        )
    except KeyboardInterrupt as e:
        bar.close()
        warnings.record(out)
        click.echo(
            f"rs-onnx: {'terminated' if isinstance(e, Terminated) else 'interrupted'} after "
            f"{len(rows)} examples this run{resume_hint()}",
            err=True,
        )
        ctx.exit(143 if isinstance(e, Terminated) else 130)
    except WriteError as e:
        bar.close()
        if out is not None and not out.parent.is_dir():  # its folder was removed: nothing can be kept or recorded
            raise WriteError(f"{e}; the run stopped after {len(rows)} examples this run; nothing of it is kept") from e
        kept = count_rows(out) if out is not None and out.exists() else 0
        hint = " (once the cause is fixed, run the same command with --resume to continue)" if kept else ""
        raise WriteError(
            f"{e}; the run stopped after {len(rows)} examples this run and {out}.meta.json says "
            f"failed; {kept} complete rows are kept in {out}{hint}"
        ) from e
    except RsOnnxError as e:
        bar.close()
        warnings.record(out)
        if getattr(e, "resumable", False) and resume_hint():  # e.g. the Ray cluster lost: rows kept, --resume
            raise RsOnnxError(f"{e}{resume_hint()}") from e
        raise
    except Exception as e:  # e.g. the execution provider failing mid-run
        bar.close()
        warnings.record(out)
        raise RsOnnxError(
            f"the run stopped after {len(rows)} examples: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}{resume_hint()}"
        ) from e
    bar.close()
    warnings.record(out)
    if not (rows or out):
        return
    results = _run_results(rows, out, mode, cfg)
    if kwargs.get("as_json"):
        from .summaries import run_summary

        summary = {
            **run_summary(results, DEFAULT_RADII),
            "computed_this_run": len(rows),
            "seconds": meta["timings"]["seconds"],
        }
        click.echo(json.dumps(summary, indent=2))
    elif mode == "certify":
        from .checks import one_class_note

        table = _accuracy_table(results, len(rows), meta["timings"]["seconds"])
        one = one_class_note(results.predict, results.label)
        if one:
            table += f"\nnote: {one}"
        acc = meta.get("clean_accuracy")
        if acc:
            table += (
                f"\nclean accuracy of the base classifier (no noise) on the first {acc['examples']} labelled "
                f"examples: {100 * acc['accuracy']:.1f}% ("
                + (
                    f"chance {100 * acc['chance']:.1f}%"
                    if acc.get("chance")
                    else "chance unknown: the model's output holds class indices and declares no class count"
                )
                + ")"
            )
        click.echo(table, err=out is None)
    else:
        from .checks import one_class_note
        from .summaries import predict_text

        one = one_class_note(results.predict, results.label)
        click.echo(
            f"{predict_text(results)}; {len(rows)} computed in this run in {meta['timings']['seconds']:.1f} s"
            + (f"\nnote: {one}" if one else ""),
            err=out is None,
        )


class _Computed:
    """The rows computed in this run, as much as the closing summary needs: their number, and with ``keep``
    (no --out: the summary is made from them) their Cohen columns and ``nonfinite`` in typed arrays, 8 bytes
    a value. Rows themselves are never kept: a run of 10^6 examples holds ~56 MB here, not a dict a row."""

    FLOAT_COLUMNS = ("radius", "time")
    OPTIONAL = ("n", "n0", "samples")  # kept when every row has them (what samples_spent reads)

    def __init__(self, keep: bool) -> None:
        from array import array

        from .results import REQUIRED_COLUMNS

        self.count = 0
        names = (*REQUIRED_COLUMNS, "nonfinite", *self.OPTIONAL)
        self.columns = {c: array("d" if c in self.FLOAT_COLUMNS else "q") for c in names} if keep else None
        self.missing: set[str] = set()  # optional columns some row lacked

    def add(self, rows: list[dict]) -> None:
        self.count += len(rows)
        if self.columns is None:
            return
        for c, values in self.columns.items():
            if c in self.OPTIONAL and (c in self.missing or not all(c in r for r in rows)):
                self.missing.add(c)
                continue
            values.extend(r.get(c, 0) for r in rows)

    def __len__(self) -> int:
        return self.count


def _run_results(rows: _Computed, out: Path | None, mode: str, cfg):
    """The whole run as analysis.Results: the file with its meta.json when there is one (a resumed run
    included), else this run's rows (with sigma, n and alpha for the reach of the radii)."""
    import numpy as np

    from .analysis import Results, read_run

    if out:
        return read_run(out)
    assert rows.columns is not None  # kept without --out
    columns = {c: np.asarray(values) for c, values in rows.columns.items() if c not in rows.missing}
    return Results(columns, None, mode, {"mode": mode, "config": cfg.to_dict()})


def _ray_missing() -> bool:
    """True when Ray cannot be imported here (checked without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is None
    except ValueError:  # sys.modules["ray"] is None: imports of it fail
        return True


def _accuracy_table(results, computed: int, seconds: float) -> str:
    """Certified accuracy of the whole run (radii out of reach at its n and alpha marked)."""
    from dataclasses import replace

    from .analysis import table_rows, to_markdown

    table = to_markdown(table_rows({"certified accuracy": replace(results, path=None)}, DEFAULT_RADII))
    return f"{table}{len(results)} examples, {computed} computed in this run in {seconds:.1f} s"


@cli.command()
@_run_options
@click.option("--n0", type=int, help="Selection samples that pick the class to certify (default 100).")
@click.option(
    "--sequential",
    is_flag=True,
    default=None,
    help="Stop sampling each example as soon as --radii are decided (n becomes the budget).",
)
@list_option(
    "--radii",
    help="Sequential: radii to decide, comma-separated or repeated (default 0,0.25,0.5,0.75,1; 0 decides "
    "predict-or-abstain: without it an example stops once these radii are decided, abstaining if 0 was not yet).",
)
@click.option("--precision", type=float, help="Sequential: find the radius to within this instead of deciding radii.")
@click.option("--looks", type=int, help="Sequential: planned looks at the counts (default 100).")
@click.option("--first-look", type=int, help="Sequential: estimation samples at the first look (default 10).")
@click.option(
    "--guess",
    type=Choice(["select", "label"]),
    help="Sequential: the class to certify: select (top class of selection samples, default) or label "
    "(the example's label, no selection samples; never certifies g's own class when it differs).",
)
@click.option(
    "--budget",
    type=int,
    help="Sequential: most samples over the whole run; looks breadth-first, the budget left goes to the "
    "most promising examples.",
)
@click.option(
    "--bound",
    type=Choice(["cohen", "best"]),
    help="radius column: cohen (Cohen et al.'s, default) or best (max of Cohen's and the two-class bound, "
    "alpha split between them).",
)
@click.pass_context
def certify(ctx: click.Context, **kwargs) -> None:
    """CERTIFY each example of DATA with the ONNX model MODEL.

    Without MODEL and DATA, certifies the bundled digits model on the bundled digits.
    Writes Cohen et al.'s TSV columns (idx label predict radius correct time) and more.

    \b
    DATA may be:
      - an .npz with 'images' [N,H,W], [N,H,W,C], [N,C,H,W] or [N,D] and 'labels' [N];
      - an .npy of images with --labels FILE (.npy, or one integer per line);
      - a folder with class subfolders (torchvision ImageFolder: names that are all integers
        give their value, else sorted names give the indices; --classes FILE to set the order,
        e.g. ImageNet's synset list), or images at its top with --labels, --label or
        --label-from-filename;
      - a .csv/.tsv manifest with 'path' and 'label' columns (--path-column, --label-column;
        paths relative to the manifest; --classes to read labels as class names);
      - a .csv/.tsv (or .csv.gz/.tsv.gz) of numbers only: a features table, one example per
        row, the label in the column 'label' or the last (--label-column NAME or INDEX);
      - a single image with --label N.
    Image files and grey arrays are converted to the model's channels; --resize N --center-crop HxW map them
    to the model's size (ImageNet: --resize 256 --center-crop 224), --resize HxW stretches them
    to it; without them an image of another size is refused. A preprocessor_config.json beside
    MODEL (as optimum-cli writes it) gives these and scale/mean/std unless flags do; a model
    whose input dims are symbolic takes the data's shape (or --input-shape).
    """
    _execute(ctx, "certify", kwargs)


@cli.command()
@_run_options
@click.pass_context
def predict(ctx: click.Context, **kwargs) -> None:
    """PREDICT each example of DATA: the smoothed class, or -1 (abstain) when unsure at level alpha.

    DATA is read as by certify (see rs-onnx certify --help).
    Ends with a summary: accuracy, abstention rate and time per example.
    """
    _execute(ctx, "predict", kwargs)


@cli.command()
@click.argument("model")
@click.option("--input-name", help="Model input to read (needed when there are several).")
@click.option("--output-name", help="Model output to read (needed when ambiguous).")
@click.option("--input-shape", help="Per-example input shape, no batch dim (3,224,224), for symbolic dims.")
@click.option("--preprocessor", help="preprocessor_config.json to read (default: the one beside MODEL; none: ignore).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.pass_context
def inspect(ctx, model, input_name, output_name, input_shape, preprocessor, device, as_json) -> None:
    """What is in MODEL, how rs-onnx reads it, warnings, and a YAML config to start from.

    Exits 1 when it reports a PROBLEM (rs-onnx cannot run the model as it stands)."""
    from .inspection import inspect_model, render

    quiet_onnxruntime("--debug" in sys.argv)
    report = inspect_model(
        model,
        input_name=input_name,
        output_name=output_name,
        device=device,
        input_shape=input_shape,
        preprocessor=preprocessor,
    )
    click.echo(json.dumps(report, indent=2, default=str) if as_json else render(report))
    if "problem" in report:  # the report on stdout; the one error line on stderr, as every failure has
        click.echo(f"rs-onnx: error: {escape(report['problem'])}", err=True)
        ctx.exit(1)


@cli.command()
@click.argument("classifier")
@click.option("--denoiser", required=True, help="ONNX denoiser: [N,C,H,W] images in [0,1] -> same shape.")
@click.option("-o", "--out", required=True, type=click.Path(), help="The composed .onnx to write.")
@click.option("--input-name", help="Classifier input to feed (needed when it has several).")
@click.option("--preset", type=Choice(_presets()), help="Normalisation preset of the classifier.")
@click.option("--layout", type=Choice(_layouts()), help="Classifier input layout.")
@click.option("--scale", type=float, help="Multiply by this first (255 for classifiers taking 0..255).")
@list_option("--mean", help="Per-channel mean of the classifier (comma-separated or one flag per channel).")
@list_option("--std", help="Per-channel std of the classifier (comma-separated or one flag per channel).")
@click.option("--dtype", help="Classifier input dtype (integers are rounded and clipped).")
@click.option("--channel-order", type=Choice(["rgb", "bgr"]), help="bgr: the classifier takes B, G, R channels.")
@click.option("--input-shape", help="The classifier's per-example input shape (3,224,224), for symbolic dims.")
@click.pass_context
def compose(ctx, classifier, denoiser, out, input_name, **kwargs) -> None:
    """Compose DENOISER in front of CLASSIFIER into one ONNX model (Salman et al.'s denoised smoothing).

    The classifier's preprocessing is inserted between them as ONNX nodes, so the composed model takes
    [0,1] images and sigma keeps its pixel units; certify it with no preprocessing flags.
    """
    from .compose import compose_files
    from .config import build_config

    flags = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in kwargs.items()
        if v not in (None, ()) and ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT
    }
    cfg, _ = build_config({}, flags)
    quiet_onnxruntime(ctx.obj["debug"])
    for path, what in ((classifier, "CLASSIFIER"), (denoiser, "--denoiser")):
        check_path_name(path, what)
    check_path_name(out, "-o", reserve=len(".data"))
    if not Path(out).is_dir():  # a folder: compose_files says so
        check_regular(out, "-o", stdout="")
    check_not_inputs({"-o": out}, {"CLASSIFIER": classifier, "--denoiser": denoiser})
    compose_files(  # logs "wrote"
        denoiser,
        classifier,
        out,
        cfg.preprocess_spec(),
        classifier_input_name=input_name or cfg.input_name,
        classifier_input_shape=None if cfg.input_shape is None else tuple(cfg.input_shape),
    )


def _split_radii(paths: tuple[str, ...], radii: tuple[float, ...]) -> tuple[list[str], list[float]]:
    """``--radii 0 0.25 0.5``: click takes the first number; the rest arrive as positional arguments."""
    files, extra = [], []
    for p in paths:
        if radii and not Path(p).exists():
            try:
                extra.append(float(p))
                continue
            except ValueError:
                pass
        files.append(p)
    return files, [*radii, *extra]


def _not_nan(ctx, param, value):
    """click's FloatRange lets NaN through (every comparison with it is False): refuse it (exit 2)."""
    if value is not None and value != value:
        raise click.BadParameter(f"{value!r}: expected a number (in the range shown by --help), not NaN", ctx, param)
    return value


def _requirements(ctx, param, value):
    """``--require 0.5:0.8,1:50%`` -> population.Requirement tuple; a malformed one is a usage error (exit 2)."""
    from .population import parse_requirements

    try:
        return parse_requirements(value or ())
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None


@cli.command()
@click.argument("results", nargs=-1, required=True)
@list_option("--radii", help="Radii for the table, comma-separated or repeated (default 0,0.25,0.5,0.75,1).")
@click.option("--label", "labels", multiple=True, help="Label per results file (default: file name).")
@click.option(
    "--format",
    "fmt",
    type=Choice(["markdown", "csv", "latex"]),
    default="markdown",
    show_default=True,
    help="Table format on stdout.",
)
@click.option("--plot", type=click.Path(), help="Write a certified-accuracy step plot (.png or .pdf).")
@click.option(
    "--radius-column", default="radius", show_default=True, help="Radius column to use (e.g. radius_tv, radius_2class)."
)
@click.option(
    "--norm",
    type=Choice(["l1", "l2", "linf"]),
    help="Radii in this norm (each file's radius or radius_<norm> column); without it every file's radius "
    "column must be in the same norm (meta.json says which).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary per file on stdout instead of the table.")
@click.option(
    "--confidence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    callback=_not_nan,
    help="Confidence of the lower bounds on the population's certified accuracy.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, max_open=True),
    callback=_not_nan,
    help="The certificates' alpha for files without a meta.json (Cohen et al.'s certify.py: 0.001); a "
    "run's own meta.json takes precedence.",
)
@click.option(
    "--require",
    "requires",
    multiple=True,
    metavar="R:A",
    callback=_requirements,
    help="Exit 1 unless the lower bound on certified accuracy at radius R is at least A (0.80 or 80%) for "
    "every file; comma-separated or repeated for several radii.",
)
def analyze(results, radii, labels, fmt, plot, radius_column, norm, as_json, confidence, alpha, requires) -> None:
    """Certified accuracy at given radii, average certified radius, abstention rate and time per image.

    Reads rs-onnx TSVs (certify and predict) and Cohen et al.'s own files; several files make several
    rows (and curves). Radii beyond the largest certifiable at a run's n and alpha are marked out of reach.
    Each certified accuracy comes with a one-sided lower confidence bound on the population's (--confidence),
    which accounts for the number of examples and each certificate's alpha; --require gates on it.
    """
    from . import analysis
    from .population import enforce

    files, radii = _split_radii(results, radii)
    if plot:
        check_regular(plot, "--plot", stdout="")
        check_not_inputs({"--plot": plot}, {f"results file {i + 1}": f for i, f in enumerate(files)})
    if labels and len(labels) != len(files):
        raise click.UsageError(f"{len(labels)} --label values for {len(files)} results files; expected one per file")
    names = list(labels) if labels else [Path(f).stem for f in files]
    if len(set(names)) != len(names):
        names = [str(f) for f in files]
    runs = {name: analysis.read_run(f) for name, f in zip(names, files)}
    runs, unit = analysis.select_norm(runs, dict(zip(names, files)), norm, radius_column)
    radius_column = "radius"
    if norm or unit != "l2":
        runs = {f"{name} ({unit})": res for name, res in runs.items()}
    log.info("radii in %s, [0,1] pixel units", unit)
    bounds = {"confidence": confidence, "alpha": alpha}
    checks = analysis.requirement_checks(runs, requires, radius_column, **bounds)  # refuses an unknown alpha
    if as_json:
        from .summaries import run_summary

        summaries = [run_summary(res, radii or DEFAULT_RADII, name, **bounds) for name, res in runs.items()]
        for s in summaries if requires else ():
            s["requirements"] = [{k: v for k, v in c.items() if k != "run"} for c in checks if c["run"] == s["run"]]
        click.echo(json.dumps(summaries, indent=2))
    else:
        rows = analysis.table_rows(runs, radii or DEFAULT_RADII, radius_column, **bounds)
        render = {"markdown": analysis.to_markdown, "csv": analysis.to_csv, "latex": analysis.to_latex}[fmt]
        text = render(rows)
        click.echo(text, nl=not text.endswith("\n"))
    if plot:
        analysis.plot_certified_accuracy(
            runs, plot, radius_column=radius_column, xlabel=f"radius ({unit}, [0,1] pixel units)"
        )
        log.info("wrote %s", plot)
    enforce(checks)  # after the table and plot: a CI log shows the numbers, then the one error line
    if checks:
        log.info(
            "--require met: every lower bound reaches its threshold (%d checked at %g%% confidence)",
            len(checks),
            100 * confidence,
        )


@cli.command()
@click.argument("model", required=False)
@click.argument("data", required=False)
@click.option("--device", help="auto | cpu | cuda | cuda:N (default auto).")
@click.option("--batch-size", help="Samples per model call, or auto (default: the probe's fastest size).")
@click.option("--fp16", is_flag=True, default=None, help="Run the float16 conversion of the model.")
@click.option("--n", "n", type=int, help="Samples of the estimate that seconds per image is given at (default 100000).")
@click.option("--n0", type=int, help="Selection samples (default 100).")
@click.option("--sigma", type=float, help="Noise level (default: the model's rs_onnx.sigma, else 0.25).")
@click.option("--noise-threads", type=int, help="Threads drawing noise (default as certify).")
@click.option("--cuda-graph", is_flag=True, default=None, help="CUDA: replay a CUDA graph (needs --batch-size).")
@click.option(
    "--device-noise/--no-device-noise", default=None, help="CUDA: noise drawn on the GPU (default as certify)."
)
@click.option("--cudnn-algo-search", type=Choice(["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]), help="CUDA: cuDNN's search.")
@click.option("--prefer-nhwc", is_flag=True, default=None, help="CUDA: the provider's NHWC convolutions.")
@click.option("--tensorrt", is_flag=True, default=None, help="CUDA: the TensorRT provider when present.")
@click.option("--input-shape", help="Per-example input shape for symbolic dims (default: DATA's), e.g. 3,224,224.")
@click.option("--resize", help="Image files: shorter side N, or HxW (as certify).")
@click.option("--center-crop", help="Image files: crop N or HxW from the centre after --resize (as certify).")
@click.option("--config", "config_path", type=click.Path(), help="YAML file with any of certify's options.")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="About how long the measured rounds take.")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON on stdout.")
@click.pass_context
def bench(ctx: click.Context, seconds: float, as_json: bool, **kwargs) -> None:
    """How fast certification will be: the model's bare forward rate (the ceiling), rs-onnx's CERTIFY rate
    with the options a run would use, their ratio, the best batch and seconds per image at --n, side by side.

    Without MODEL, the bundled digits model and its digits. Without DATA, a random image of the model's
    input shape. --json keys: ceiling_samples_per_s, certify_samples_per_s, ratio, seconds_per_image,
    batch_size, best_batch, n, n_measured, extrapolated, device, providers, options, seconds.
    """
    from .bench import bench as measure
    from .bench import bench_config, summary

    res = measure(bench_config(kwargs), seconds=seconds)
    click.echo(json.dumps(res, default=str) if as_json else summary(res))


@cli.command()
@click.argument("results", nargs=-1, required=True)
@click.option(
    "--skip-inputs", is_flag=True, help="Do not hash the model and data found at the paths meta.json records."
)
@click.pass_context
def verify(ctx: click.Context, results, skip_inputs) -> None:
    """Recompute every row of RESULTS from its counts and the run's meta.json; one verdict line per file.

    Checks each row's class, pA bound, every radius column and correct with the statistics the run used, the
    header, meta.json's configuration and its digest of the rows (truncated, edited or appended files), and
    the model's and data's sha256 where they are found. Exits 0 only when every row of every file reproduces.
    """
    from .verify import verify_file

    ok = True
    for path in results:
        verdict = verify_file(path, inputs=not skip_inputs)
        click.echo(escape(verdict.line()))
        ok = ok and verdict.ok
    if not ok:
        ctx.exit(1)


@cli.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check the installation: clashing onnxruntime builds, working providers, why CUDA does not run.

    Exits 1 when a check fails.
    """
    from .doctor import report

    text, ok = report()
    click.echo(text)
    if not ok:
        ctx.exit(1)


@cli.command()
@click.argument("results", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(), help="The .html file to write (- for stdout).")
@click.option("--label", "labels", multiple=True, help="Label per results file (default: file name).")
@click.option("--title", help="Title of the report (default: from the runs).")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
@click.option(
    "--confidence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    callback=_not_nan,
    help="Confidence of the lower bounds on the population's certified accuracy.",
)
def report(results, out, labels, title, overwrite, confidence) -> None:
    """One self-contained HTML REPORT of certify runs (their TSVs and .meta.json files).

    Provenance, certified-accuracy curves, the table at standard radii with population lower bounds
    (--confidence), ACR, abstention and samples per example, accuracy
    per class, the distribution of radii, the slowest examples and every warning; no network access
    and no external files are needed to view it.
    """
    from .report import write_report

    if labels and len(labels) != len(results):
        raise click.UsageError(f"{len(labels)} --label values for {len(results)} results files; expected one per file")
    if out != "-" and not Path(out).is_dir():  # a folder: write_report says so
        check_regular(out, "-o", stdout="-o - writes the report to stdout")
    write_report(
        list(results), out, labels=list(labels) or None, title=title, overwrite=overwrite, confidence=confidence
    )
    if out != "-":
        log.info("wrote %s", out)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line on bad input (traceback with --debug) and exit code 2 for usage errors
    (unknown option or command, a value that is not a number, a bad choice, a count beyond the counters),
    1 for the rest (data, model, device, output), 130 after Ctrl-C, 143 after SIGTERM or SIGHUP."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    with warnings.catch_warnings():
        quiet_warnings(debug)
        code = _main(args, debug)
    if argv is None and code in (130, 143):  # a signal ended the run: end within a second
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """End the process at once after a signal: the exit handlers run (temporary files, Ray's), but the
    interpreter's collection of every object of every loaded module at teardown (seconds with scipy and
    onnxruntime loaded, on a busy machine) is skipped (``gc.freeze``)."""
    import gc

    gc.freeze()
    sys.exit(code)


def _main(args: list[str], debug: bool) -> int:
    """Runs the CLI; every failure is one escaped line on stderr (untrusted text cannot add a line)."""
    try:
        with signals_stop_runs():  # Ctrl-C, SIGTERM and SIGHUP also stop a running model call
            code = cli.main(args=args, prog_name="rs-onnx", standalone_mode=False)
    except (click.Abort, KeyboardInterrupt) as e:  # also at start-up (loading, verifying, probing)
        if debug and not isinstance(e, click.Abort):
            raise
        cause = e if isinstance(e, KeyboardInterrupt) else e.__cause__ or e.__context__
        if cause is None:
            click.echo("rs-onnx: aborted", err=True)
            return 130
        terminated = isinstance(cause, Terminated)
        click.echo(f"rs-onnx: {'terminated' if terminated else 'interrupted'}", err=True)
        return 143 if terminated else 130
    except click.ClickException as e:  # usage errors (unknown option or command, not a number, a bad choice): 2
        click.echo(f"rs-onnx: error: {escape(e.format_message())}", err=True)
        return e.exit_code
    except RsOnnxError as e:  # data, model, device, output: 1; a value no run can take (UsageError): 2
        if debug:
            raise
        click.echo(f"rs-onnx: error: {escape(e)}", err=True)
        return e.exit_code
    except OSError as e:  # a path the file system refuses: missing, a directory, too long, no permission, full
        if debug:
            raise
        where = f"{escape(e.filename)}: " if e.filename else ""
        click.echo(
            f"rs-onnx: error: {where}{escape(e.strerror or e)}; expected an existing file to read, or a "
            "writable path with room to write",
            err=True,
        )
        return 1
    except MemoryError as e:
        if debug:
            raise
        click.echo(
            f"rs-onnx: error: out of memory ({escape(e)}); expected inputs that fit in memory (try a smaller "
            "--batch-size)",
            err=True,
        )
        return 1
    except Exception as e:  # last resort: one line, no traceback unless --debug
        if debug:
            raise
        click.echo(
            f"rs-onnx: internal error: {type(e).__name__}: {escape(e)} (run with --debug for the traceback)", err=True
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
