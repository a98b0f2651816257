"""The commands around runs: inspect, compose, analyze, bench, verify, doctor and report (each calls its module)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .cli import DEFAULT_RADII, Choice, cli, layouts, list_option, presets
from .guard import check_path_name, escape, quiet_onnxruntime
from .outputs import check_not_inputs, check_regular

log = logging.getLogger("rs_onnx")


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
@click.option("--preset", type=Choice(presets()), help="Normalisation preset of the classifier.")
@click.option("--layout", type=Choice(layouts()), help="Classifier input layout.")
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


confidence_option = click.option(
    "--confidence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    callback=_not_nan,
    help="Confidence of the lower bounds on the population's certified accuracy.",
)
"""analyze's and report's --confidence (one option: the same default and checks)."""


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
@confidence_option
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
@confidence_option
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
