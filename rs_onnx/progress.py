"""Progress of a run: examples done/total, samples per second and ETA, on stderr.

On a terminal one line is redrawn in place (``\\r``) at most 5 times a second; anywhere else (a log
file, CI) one plain line is written every ``interval`` seconds (30 by default) and once at the end, so
logs never fill with carriage-return updates. Counts include examples finished by an earlier run
(``--resume``), and the bar ends at total even when sequential sampling stops examples early.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    """h:mm:ss (or m:ss under an hour)."""
    s = round(max(0.0, seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _rate(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


class Progress:
    """Counts examples (``examples(k)``) and noisy samples (``samples(k)``) of a run and shows them.

    ``total``: examples selected for the run; ``done``: of those, finished before this run started;
    ``samples_per_example``: the most samples one example may take (ETA before the first one finishes).
    ``clock`` returns seconds (monotonic); ``stream`` is written to (default: sys.stderr at each write).
    """

    TTY_INTERVAL = 0.2

    def __init__(
        self,
        desc: str,
        total: int,
        done: int = 0,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        tty: bool | None = None,
        interval: float = 30.0,
        samples_per_example: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.done, self.done_before = desc, int(total), int(done), int(done)
        self.samples_drawn = 0
        self.enabled = enabled
        self._stream = stream
        self._tty = tty
        self.interval = interval
        self.samples_per_example = samples_per_example
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._drawn = False
        self._closed = False

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def tty(self) -> bool:
        if self._tty is None:
            isatty = getattr(self.stream, "isatty", None)
            return bool(isatty and isatty())
        return self._tty

    def samples(self, k: int) -> None:
        """``k`` more noisy samples went through the model."""
        self.samples_drawn += int(k)
        self._maybe_show()

    def examples(self, k: int) -> None:
        """``k`` more examples are finished (their rows written)."""
        self.done = min(self.total, self.done + int(k))
        self._maybe_show()

    def line(self) -> str:
        """``certify 12/50 examples (24%) | 3.4k samples/s | ETA 0:42``."""
        elapsed = self._clock() - self._start
        parts = [f"{self.desc} {self.done}/{self.total} examples ({100 * self.done / max(1, self.total):.0f}%)"]
        rate = self.samples_drawn / elapsed if elapsed > 0 else 0.0
        if self.samples_drawn:
            parts.append(f"{_rate(rate)} samples/s")
        eta = self.eta(elapsed, rate)
        if self.done >= self.total:
            parts.append(f"done in {_duration(elapsed)}")
        elif eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        return " | ".join(parts)

    def eta(self, elapsed: float, rate: float) -> float | None:
        """Seconds left: from the time per example of this run, else from the sample rate and the
        per-example budget; None before anything is known."""
        left = self.total - self.done
        finished = self.done - self.done_before
        if finished > 0 and elapsed > 0:
            return elapsed / finished * left
        if rate > 0 and self.samples_per_example:
            return max(0.0, left * self.samples_per_example - self.samples_drawn) / rate
        return None

    def _maybe_show(self) -> None:
        if not self.enabled or self._closed:
            return
        now = self._clock()
        if now - self._last < (self.TTY_INTERVAL if self.tty else self.interval):
            return
        self._last = now
        self._show()

    def _show(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(f"rs-onnx: {self.line()}\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """The last state, on its own line (idempotent)."""
        if self.enabled and not self._closed:
            self._show(final=True)
        self._closed = True
