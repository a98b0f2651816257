"""The Ray driver's loop: units of work to workers, answers back in order, through the faults a cluster has.

A *unit* is a group of whole examples (the worker answers them) or a *piece* of one example's samples (the
worker counts them; the driver adds the pieces up and answers). An *item* is what the caller receives in
order: a group, or one split example. Items pass through a bounded reorder buffer: units are sent only for
the ``window`` items from the next one to yield on, so the driver holds at most that many answers.

Answers are deterministic (the noise of a sample depends only on (seed, example, phase, block)), so a unit
may be computed twice and the first answer to arrive is kept. A unit is sent again to another worker when
its worker is lost (its process or its node died: Ray reports an actor error) or when its worker finishes
nothing for the stall timeout (a frozen process, a wedged GPU). The run ends with one :class:`WorkerError`
(``resumable``: finished rows are kept and ``--resume`` continues) when the cluster's head stops accepting
connections, when no worker is left, or when nothing finished for the stall timeout and no worker can take
over. Ray itself is never imported here: the caller passes its module.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import RsOnnxError
from .noise import ESTIMATE, PREDICT, SELECT

log = logging.getLogger("rs_onnx.distributed")

STALL_MIN_S = 60.0
"""The automatic stall timeout is never shorter than this (seconds)."""
STALL_FACTOR = 10.0
"""The automatic stall timeout: this many times the slowest unit measured so far (at least STALL_MIN_S)."""
STALL_FIRST_S = 600.0
"""The automatic stall timeout until the first unit has finished (nothing measured yet), in seconds."""
GCS_CHECK_S = 2.0
"""Seconds between checks that the cluster's head (its GCS) accepts connections."""
GCS_LOST_S = 10.0
"""Seconds the head may refuse connections before the cluster counts as lost (Ray's own driver gives up at 60)."""
POLL_S = 1.0
"""Longest wait for a worker's answer before the loop looks at stalls and the cluster again (seconds)."""
PIECE_SAMPLES = 100_000
"""A piece of a split example holds at most about this many samples (whole noise blocks)."""


class WorkerError(RsOnnxError):
    """Distributed workers could not start, kept dying, stalled, or the cluster was lost.

    ``resumable``: the run's finished rows are kept and ``--resume`` continues it once the cluster is back."""

    def __init__(self, message: str, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable


@dataclass(frozen=True)
class Unit:
    """Work for one worker call: whole examples (``phase`` None), or ``n`` samples of ``examples[0]``'s
    (example, ``phase``) stream from noise block ``block`` on."""

    item: int
    examples: tuple[int, ...]
    phase: int | None = None
    block: int = 0
    n: int = 0


def piece_size(n: int, examples: int, workers: int, tasks_per_worker: int, block_size: int) -> int | None:
    """Samples per piece when one example's ``n`` samples are split across workers, or None (not split).

    Split when the examples are too few to give every worker ``tasks_per_worker`` units, or when n is larger
    than :data:`PIECE_SAMPLES` (a unit then stays short: resending it costs little and a stall is seen
    sooner). A piece is a whole number of noise blocks of ``block_size`` samples."""
    wanted = -(-workers * tasks_per_worker // max(1, examples))  # pieces per example that fill the workers
    size = min(PIECE_SAMPLES, -(-n // wanted))
    size = max(block_size, -(-size // block_size) * block_size)
    return size if size < n else None


def plan(todo: list[int], group: int, mode: str, n0: int, n: int, piece: int | None, block_size: int):
    """(items, units): the examples ``todo`` in groups of ``group`` (one unit each), or, with ``piece``
    samples a piece, one item per example whose units are the pieces of its phases (CERTIFY: n0 selection
    samples, n estimation samples; PREDICT: n samples)."""
    if piece is None:
        items = [todo[g : g + group] for g in range(0, len(todo), group)]
        return items, [Unit(i, tuple(ex)) for i, ex in enumerate(items)]
    assert piece % block_size == 0
    phases = [(SELECT, n0), (ESTIMATE, n)] if mode == "certify" else [(PREDICT, n)]
    units = []
    for i, e in enumerate(todo):
        for phase, total in phases:
            for start in range(0, total, piece):
                units.append(Unit(i, (e,), phase, start // block_size, min(piece, total - start)))
    return [[e] for e in todo], units


def gcs_reachable(address: str | None, timeout: float = 2.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds (True when unknown)."""
    if not address:
        return True
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


class Dispatcher:
    """Runs units on Ray actors and yields (examples, answers, seconds per example) item by item, in order.

    Parameters
    ----------
    ray : the ray module.
    actors : the workers (Ray actor handles), not yet known to be ready.
    ready : ``ready(actor)`` -> ObjectRef of the actor's info dict (its session built; asked again after a
        worker was lost, to learn when Ray restarted it).
    on_ready : ``on_ready(info)`` for each worker that became ready (version checks, records).
    make_plan : ``make_plan(info)`` -> (items, units), called once, with the first ready worker's info.
    submit : ``submit(actor, unit)`` -> ObjectRef of (value, seconds): answers for whole examples, or the
        counts of a piece.
    finish : ``finish(item, examples, values)`` -> answers of an item from its units' values (in unit order).
    samples : ``samples(unit)`` -> noisy samples the unit draws (progress).
    progress : called with the samples of each unit as it finishes (first answer only), or None.
    stall_timeout : seconds a worker with work may finish nothing before its units go to others; None:
        automatic (:data:`STALL_FACTOR` times the slowest unit so far, at least :data:`STALL_MIN_S`;
        :data:`STALL_FIRST_S` before any unit finished).
    max_attempts : times a unit may be lost with its worker (cluster up) before the run fails.
    tasks_per_worker : units queued on each worker.
    window : items worked on at once past the next one to yield (the reorder buffer).
    gcs_address : the cluster head's "host:port" (None: not checked).
    """

    def __init__(
        self,
        ray,
        actors: list,
        *,
        ready: Callable,
        on_ready: Callable[[dict], None],
        make_plan: Callable[[dict], tuple[list[list[int]], list[Unit]]],
        submit: Callable,
        finish: Callable[[int, list[int], list], list],
        samples: Callable[[Unit], int],
        progress: Callable[[int], None] | None,
        stall_timeout: float | None,
        max_attempts: int,
        tasks_per_worker: int,
        window: int,
        gcs_address: str | None,
    ) -> None:
        self.ray, self.actors = ray, actors
        self._ready, self._on_ready, self._make_plan = ready, on_ready, make_plan
        self._submit_unit, self._finish, self._samples, self._progress = submit, finish, samples, progress
        self.stall_timeout = stall_timeout
        self.max_attempts, self.tasks_per_worker, self.window = max_attempts, tasks_per_worker, window
        self.gcs_address = gcs_address
        self.items: list[list[int]] | None = None
        self.units: list[Unit] = []
        self.cluster_lost = False
        self.resent = 0  # units sent again after their worker was lost or stalled
        self._slowest: float | None = None  # seconds of the slowest unit measured
        self._names: dict = {}  # actor -> "host:pid"

    # ------------------------------------------------------------------ timing
    def stall_seconds(self) -> float:
        """The stall timeout now (seconds): the one given, else derived from the slowest unit measured."""
        if self.stall_timeout is not None:
            return float(self.stall_timeout)
        if self._slowest is None:
            return STALL_FIRST_S
        return max(STALL_MIN_S, STALL_FACTOR * self._slowest)

    # ------------------------------------------------------------------ the loop
    def __iter__(self) -> Iterator[tuple[list[int], list, float]]:
        ray = self.ray
        now = time.monotonic()
        self.starting = {self._ready(a): a for a in self.actors}  # ref -> actor (starting or restarting)
        self._again: dict = {}  # actor -> when to ask again whether it is ready (Ray is restarting it)
        self.live: dict = {}  # actor -> units in flight on it (a worker that takes work)
        self.stalled: dict = {}  # actor -> units in flight on it (finished nothing for the stall timeout)
        self.in_flight: dict = {}  # ref -> (actor, unit)
        self.busy_since: dict = {}  # actor -> when it last went from idle to busy
        self.last_done: dict = {}  # actor -> when it last finished a unit
        self.last_progress = now  # a unit finished or a worker became ready
        self.ever_ready = False
        self._gcs_checked = now
        self._gcs_down_since: float | None = None
        self._warned = now
        next_out = 0
        try:
            while self.items is None or next_out < len(self.items):
                self._send(next_out)
                self._ask_again(time.monotonic())
                refs = list(self.in_flight) + list(self.starting)
                if not refs and not self._again:
                    left = len(self.items) - next_out if self.items is not None else "all"
                    raise WorkerError(
                        f"all {len(self.actors)} Ray workers were lost with {left} groups of examples left; "
                        "expected at least one live worker (see `ray status` and the Ray logs)",
                        resumable=True,
                    )
                if refs:
                    finished, rest = ray.wait(refs, num_returns=1, timeout=POLL_S)
                    if finished and rest:  # and every other answer already there, without waiting
                        finished += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                else:
                    finished = []
                    time.sleep(POLL_S)
                now = time.monotonic()
                for ref in finished:
                    if ref in self.starting:
                        self._started(ref, now)
                    else:
                        self._answered(ref, now)
                self._check_cluster(now)
                self._check_stalls(now)
                while self.items is not None and next_out in self._item_done:
                    answers, seconds = self._item_done.pop(next_out)
                    yield self.items[next_out], answers, seconds
                    next_out += 1
        finally:
            if not self.cluster_lost:  # with the head gone, Ray calls would wait for it
                for ref in [*self.in_flight, *self.starting]:
                    try:
                        ray.cancel(ref)
                    except Exception:  # noqa: BLE001 - best effort; killing the actors drops the rest
                        pass
                for actor in self.actors:
                    try:
                        ray.kill(actor)
                    except Exception:  # noqa: BLE001 - already gone
                        pass

    def _send(self, next_out: int) -> None:
        """Queue pending units on live workers with room, for the items in the reorder window."""
        if self.items is None:
            return
        for actor in sorted(self.live, key=lambda a: len(self.live[a])):
            on = self.live[actor]
            while len(on) < self.tasks_per_worker and self.pending:
                u = self.pending[0]
                if self._unit_done[u]:
                    self.pending.popleft()
                    continue
                if self.units[u].item >= next_out + self.window:
                    return
                self.pending.popleft()
                if not on:
                    self.busy_since[actor] = time.monotonic()
                self.in_flight[self._submit_unit(actor, self.units[u])] = (actor, u)
                on.add(u)

    def _started(self, ref, now: float) -> None:
        RayActorError, RayTaskError = self.ray.exceptions.RayActorError, self.ray.exceptions.RayTaskError  # noqa: N806

        actor = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except RayTaskError as e:
            raise_task_error(e)
        except RayActorError as e:
            if _temporary(e, self.ray):  # Ray is restarting it: ask again in a while
                self._again[actor] = now + POLL_S
            else:
                log.warning("ray: worker %s is gone (%s)", self._names.get(actor, "?"), type(e).__name__)
            return
        self._names[actor] = f"{info.get('host')}:{info.get('pid')}"
        self._on_ready(info)
        if self.items is None:
            self.items, self.units = self._make_plan(info)
            self.pending: deque = deque(range(len(self.units)))
            self._unit_done = bytearray(len(self.units))
            self._values: dict = {}  # unit -> (value, seconds), until its item is complete
            self._item_left = [0] * len(self.items)
            for unit in self.units:
                self._item_left[unit.item] += 1
            self._item_units: dict = {}  # item -> its units (split items only)
            self._item_done: dict = {}  # item -> (answers, seconds): the reorder buffer
            self.attempts: dict = {}  # unit -> times lost with a worker
        log.info("ray: worker %s ready on %s", self._names[actor], info.get("device"))
        self.live[actor] = set()
        self.last_done[actor] = now
        self.last_progress = now
        self.ever_ready = True

    def _answered(self, ref, now: float) -> None:
        RayActorError, RayTaskError = self.ray.exceptions.RayActorError, self.ray.exceptions.RayTaskError  # noqa: N806

        actor, u = self.in_flight.pop(ref)
        on = self.live.get(actor, self.stalled.get(actor))
        was_on = on is not None and u in on
        if on is not None:
            on.discard(u)
        try:
            value, seconds = self.ray.get(ref)
        except RayTaskError as e:
            raise_task_error(e)
        except RayActorError as e:
            self._lost(actor, u if was_on else None, e, now)
            return
        self.last_done[actor] = now
        self.last_progress = now
        if actor in self.stalled:
            log.warning("ray: worker %s answers again; it takes work again", self._names.get(actor))
            self.live[actor] = self.stalled.pop(actor)
        unit = self.units[u]
        took = float(seconds) * (len(unit.examples) if unit.phase is None else 1)
        self._slowest = took if self._slowest is None else max(self._slowest, took)
        if self._unit_done[u] or unit.item in self._item_done:
            return  # answered by another worker first: the first answer is kept
        self._unit_done[u] = 1
        if self._progress:
            self._progress(self._samples(unit))
        if unit.phase is None:
            if len(value) != len(unit.examples):
                raise WorkerError(f"a worker gave {len(value)} answers for {len(unit.examples)} examples")
            self._item_done[unit.item] = (value, float(seconds))
            return
        self._values[u] = (value, float(seconds))
        self._item_units.setdefault(unit.item, []).append(u)
        self._item_left[unit.item] -= 1
        if self._item_left[unit.item] == 0:
            mine = sorted(self._item_units.pop(unit.item))
            parts = [self._values.pop(v) for v in mine]
            examples = self.items[unit.item]  # type: ignore[index]
            answers = self._finish(unit.item, examples, [(self.units[v], part[0]) for v, part in zip(mine, parts)])
            self._item_done[unit.item] = (answers, sum(part[1] for part in parts) / len(examples))

    def _resend(self, units) -> None:
        fresh = [u for u in units if not self._unit_done[u]]
        self.resent += len(fresh)
        self.pending = deque(sorted(set(self.pending) | set(fresh)))

    def _lost(self, actor, u: int | None, error, now: float) -> None:
        """A unit's worker was lost (an actor error): the unit and the worker's other units go to the others;
        the worker is asked when it is back (Ray may restart it)."""
        on = self.live.pop(actor, None)
        if on is None:
            on = self.stalled.pop(actor, None)
        if on is None and u is None:
            return  # this worker's loss was handled already
        up = gcs_reachable(self.gcs_address)
        if not up and self._gcs_down_since is None:
            self._gcs_down_since = now
        if u is not None and up:
            self.attempts[u] = self.attempts.get(u, 0) + 1
            if self.attempts[u] >= self.max_attempts:
                first, last = self.units[u].examples[0], self.units[u].examples[-1]
                raise WorkerError(
                    f"examples {first}..{last}: lost with {self.attempts[u]} workers while the cluster stayed "
                    "up; expected them to finish (do they crash the worker? see the Ray logs)"
                ) from error
        units = set(on or ()) | ({u} if u is not None else set())
        self._resend(units)
        log.warning(
            "ray: worker %s lost (%s); its %d units go to the others",
            self._names.get(actor, "?"),
            type(error).__name__,
            len(units),
        )
        if actor not in self.starting.values() and actor not in self._again:
            self._again[actor] = now + POLL_S  # asked whether it is back (Ray may restart it)

    def _ask_again(self, now: float) -> None:
        for actor, when in list(self._again.items()):
            if when <= now:
                del self._again[actor]
                self.starting[self._ready(actor)] = actor

    def _check_stalls(self, now: float) -> None:
        """Units of a worker that finished nothing for the stall timeout go to the others; the run ends when
        nothing finished for that long and no worker can take over."""
        if self.items is None:
            if not self.ever_ready and now - self._warned > 60:
                self._warned = now
                log.warning(
                    "ray: 0 of %d workers started; waiting (cluster resources %s)",
                    len(self.actors),
                    self.ray.available_resources(),
                )
            return
        limit = self.stall_seconds()
        for actor in [a for a, on in self.live.items() if on]:
            quiet = now - max(self.busy_since.get(actor, now), self.last_done.get(actor, now))
            if quiet > limit:
                on = self.live.pop(actor)
                self.stalled[actor] = on
                self._resend(on)
                log.warning(
                    "ray: worker %s finished nothing in %.0f s (frozen? a wedged GPU?); its %d units go to the "
                    "others (stall timeout %.0f s)",
                    self._names.get(actor, "?"),
                    quiet,
                    len(on),
                    limit,
                )
        if not self.live and self._gcs_down_since is None and now - self.last_progress > limit:
            raise WorkerError(
                f"no Ray worker finished anything in the last {now - self.last_progress:.0f} s (stall timeout "
                f"{limit:.0f} s): {len(self.stalled)} stalled (frozen? a wedged GPU?), {len(self.starting) + len(self._again)} "
                "restarting or waiting for resources, none left to take over; expected a worker that answers",
                resumable=True,
            )

    def _check_cluster(self, now: float) -> None:
        """End the run (resumable) when the head has refused connections for :data:`GCS_LOST_S` seconds."""
        if not self.gcs_address or (now - self._gcs_checked < GCS_CHECK_S and self._gcs_down_since is None):
            return
        self._gcs_checked = now
        if gcs_reachable(self.gcs_address):
            self._gcs_down_since = None
            return
        if self._gcs_down_since is None:
            self._gcs_down_since = now
        if now - self._gcs_down_since >= GCS_LOST_S:
            self.cluster_lost = True
            left = len(self.items) - len(self._item_done) if self.items is not None else "all"
            raise WorkerError(
                f"the Ray cluster was lost: its head ({self.gcs_address}) accepted no connection for "
                f"{now - self._gcs_down_since:.0f} s, with {left} groups of examples left; expected a running "
                "cluster (restart it: ray start --head ...)",
                resumable=True,
            )


def _temporary(error, ray) -> bool:
    """Whether an actor error says the actor may come back (Ray is restarting it) rather than that it died."""
    unavailable = getattr(ray.exceptions, "ActorUnavailableError", None)
    return unavailable is not None and isinstance(error, unavailable)


def raise_task_error(e) -> None:
    """Re-raise a worker's own error (e.g. a DeviceError) as itself, so the CLI prints one line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, RsOnnxError):
        raise cause from None
    raise e
