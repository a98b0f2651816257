"""Stopping a run from inside the model: Ctrl-C, SIGTERM and SIGHUP end a running onnxruntime call.

Python runs signal handlers only between bytecodes of the main thread, so a long ``session.run`` would
ignore Ctrl-C until it returns (forever, for a graph that never finishes). Every onnxruntime call of
rs-onnx passes run options from :func:`run_options`; :func:`signals_stop_runs` makes the C signal handler
wake a watcher thread (``signal.set_wakeup_fd``), which sets ``terminate`` on all of them, so the call
returns at once and the Python handler raises :class:`KeyboardInterrupt` (or :class:`Terminated`).
:func:`time_limit` does the same after a number of seconds (load-time verification).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import weakref
from collections.abc import Iterator

LOAD_TIME_LIMIT_S = 300.0
"""Default limit (seconds) on one model call at load time (verification); ``RS_ONNX_LOAD_TIME_LIMIT`` overrides it."""

_options: weakref.WeakSet = weakref.WeakSet()
_stopping = threading.Event()


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: finished rows stay, the meta file says 'interrupted'."""


def load_time_limit() -> float:
    """Seconds one model call may take at load time (``RS_ONNX_LOAD_TIME_LIMIT`` or :data:`LOAD_TIME_LIMIT_S`)."""
    text = os.environ.get("RS_ONNX_LOAD_TIME_LIMIT", "")
    try:
        value = float(text) if text else LOAD_TIME_LIMIT_S
    except ValueError:
        value = LOAD_TIME_LIMIT_S
    return value if value > 0 else LOAD_TIME_LIMIT_S


def run_options(log_severity_level: int | None = None):
    """New onnxruntime RunOptions that a signal (or :func:`terminate_all`) can stop; already stopped if a
    stop is under way."""
    import onnxruntime as ort

    options = ort.RunOptions()
    if log_severity_level is not None:
        options.log_severity_level = log_severity_level
    if _stopping.is_set():
        options.terminate = True
    _options.add(options)
    return options


def terminate_all() -> None:
    """Ask every running (and later) onnxruntime call of this process to stop."""
    _stopping.set()
    for options in list(_options):
        options.terminate = True


def reset() -> None:
    """Let model calls run again after a stop (tests; a library user that caught the interrupt)."""
    _stopping.clear()
    for options in list(_options):
        options.terminate = False


@contextlib.contextmanager
def time_limit(seconds: float, options_list) -> Iterator[dict]:
    """Sets ``terminate`` on ``options_list`` after ``seconds``; yields a dict whose 'expired' says if it did."""
    state = {"expired": False}

    def expire() -> None:
        state["expired"] = True
        for options in options_list:
            options.terminate = True

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield state
    finally:
        timer.cancel()


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def signals_stop_runs() -> Iterator[None]:
    """Within the block: SIGTERM and SIGHUP raise :class:`Terminated` (Ctrl-C: KeyboardInterrupt), and any of
    the three also stops a running onnxruntime call. Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kinds = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {s: signal.signal(s, _raise_terminated) for s in kinds}
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):
        old_fd = None

    def watch() -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if any(b in (signal.SIGINT, *kinds) for b in data):
                terminate_all()

    watcher = threading.Thread(target=watch, name="rs-onnx-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        if old_fd is not None:
            signal.set_wakeup_fd(old_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        with contextlib.suppress(OSError):
            writer.shutdown(socket.SHUT_RDWR)
        writer.close()
        watcher.join(timeout=1)
        reader.close()
        reset()  # a caller that goes on (tests, embedding) may run models again
