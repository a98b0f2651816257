"""The ``rs-onnx`` command line: parse, call the API, render. Logs and progress go to stderr."""

from __future__ import annotations

import logging
import re
import sys
import warnings

import click

from ._version import __version__
from .errors import RsOnnxError
from .guard import escape, quiet_warnings
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


def layouts() -> list[str]:
    return ["auto", "nchw", "nhwc", "flat"]  # rs_onnx.preprocess.LAYOUTS, without importing numpy for --help


def presets() -> list[str]:
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


# ------------------------------------------------------------------ the commands
# Each family lives in its own module and registers itself on ``cli`` when imported here, after the conventions
# above (which those modules import): cli_run (certify, predict; their options in cli_options) and cli_tools
# (inspect, compose, analyze, bench, verify, doctor, report).
from . import cli_run, cli_tools  # noqa: E402, F401


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
    # ``python -m rs_onnx.cli`` runs this file as __main__; the command modules register on rs_onnx.cli's group.
    import rs_onnx.cli

    rs_onnx.cli.main()
