"""``rs-onnx certify`` and ``rs-onnx predict``: flags and YAML -> one RunConfig, the run, its rows and summary."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import click

from .cli import DEFAULT_RADII, DEFAULT_RUN, Choice, cli, list_option
from .cli_options import run_options
from .errors import OutputError, RsOnnxError
from .guard import check_path_name, quiet_onnxruntime
from .outputs import WriteError, check_run_paths, count_rows, finished_rows
from .results import columns_for
from .stopping import Terminated

log = logging.getLogger("rs_onnx")


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
@run_options
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
@run_options
@click.pass_context
def predict(ctx: click.Context, **kwargs) -> None:
    """PREDICT each example of DATA: the smoothed class, or -1 (abstain) when unsure at level alpha.

    DATA is read as by certify (see rs-onnx certify --help).
    Ends with a summary: accuracy, abstention rate and time per example.
    """
    _execute(ctx, "predict", kwargs)
