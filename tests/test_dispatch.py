"""The Ray driver's loop (rs_onnx.dispatch) on a stand-in for Ray: resends, the first answer kept, stalls,
a lost cluster, and split examples, in milliseconds and deterministically (tests/test_ray_faults.py runs the
same faults on a real multi-node cluster)."""

from __future__ import annotations

import time

import pytest

from rs_onnx import dispatch
from rs_onnx.dispatch import Dispatcher, WorkerError, plan


class ActorLostError(Exception):
    """Stands in for ray.exceptions.RayActorError."""


class UnavailableError(ActorLostError):
    """Stands in for ray.exceptions.ActorUnavailableError (Ray is restarting the actor)."""


class TaskFailedError(Exception):
    """Stands in for ray.exceptions.RayTaskError."""


class Ref:
    def __init__(self, result=None, ready: bool = True) -> None:
        self.result, self.ready = result, ready


class FakeRay:
    """wait/get/cancel/kill over Refs; a Ref that is not ready never finishes (a frozen worker)."""

    class exceptions:  # noqa: N801 - the module's name in Ray
        RayActorError = ActorLostError
        RayTaskError = TaskFailedError
        ActorUnavailableError = UnavailableError

    def __init__(self) -> None:
        self.killed: list = []

    def wait(self, refs, num_returns=1, timeout=None):
        done = [r for r in refs if r.ready][:num_returns]
        if not done:
            time.sleep(0.01)
        return done, [r for r in refs if r not in done]

    def get(self, ref):
        if isinstance(ref.result, BaseException):
            raise ref.result
        return ref.result

    def cancel(self, ref) -> None:
        pass

    def kill(self, actor) -> None:
        self.killed.append(actor)

    def available_resources(self) -> dict:
        return {}


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(dispatch, "POLL_S", 0.01)
    monkeypatch.setattr(dispatch, "GCS_CHECK_S", 0.01)
    monkeypatch.setattr(dispatch, "GCS_LOST_S", 0.2)


def make(ray, behave, examples=6, group=2, stall=0.3, gcs=None, max_attempts=4, units=None, finish=None, ready=None):
    """A Dispatcher over actors "a" and "b"; ``behave[actor](unit)`` -> Ref of (value, seconds)."""
    calls: list = []

    def submit(actor, unit):
        calls.append((actor, unit))
        return behave[actor](unit)

    todo = list(range(examples))
    d = Dispatcher(
        ray,
        ["a", "b"],
        ready=ready or (lambda actor: Ref({"host": "h", "pid": actor, "device": "cpu", "batch_size": 10})),
        on_ready=lambda info: None,
        make_plan=lambda info: units or plan(todo, group, "certify", 1, 1, None, 1),
        submit=submit,
        finish=finish or (lambda item, examples, parts: [sum(v for _, v in parts)]),
        samples=lambda unit: 1,
        progress=None,
        stall_timeout=stall,
        max_attempts=max_attempts,
        tasks_per_worker=2,
        window=64,
        gcs_address=gcs,
    )
    return d, calls


def answer(tag):
    return lambda unit: Ref(([(tag, e) for e in unit.examples], 0.001))


def test_a_frozen_worker_has_its_units_resent_and_each_row_comes_once():
    """Worker a never answers; after the stall timeout its units go to b; every group once, in order."""
    d, calls = make(FakeRay(), {"a": lambda unit: Ref(ready=False), "b": answer("b")})
    out = list(d)
    assert [g for g, _, _ in out] == [[0, 1], [2, 3], [4, 5]]
    assert all(a == [("b", e) for e in g] for g, a, _ in out)
    assert d.resent >= 1 and "a" in d.stalled


def test_the_first_answer_is_kept():
    """Worker a answers unit 0 only after b was given it too: the row comes once, from whoever was first."""
    late = Ref(([("a", 0), ("a", 1)], 0.001), ready=False)
    first = {"done": False}

    def a(unit):
        if unit.item == 0 and not first["done"]:
            first["done"] = True
            return late
        return Ref(ready=False)

    d, _ = make(FakeRay(), {"a": a, "b": answer("b")}, stall=0.2)
    out = []
    for item in d:
        out.append(item)
        late.ready = True  # a wakes up after the resend: its answer is ignored
    assert [g for g, _, _ in out] == [[0, 1], [2, 3], [4, 5]] and len(out) == 3
    assert out[0][1] == [("b", 0), ("b", 1)]  # b's, the first to arrive


def test_every_worker_frozen_ends_in_one_resumable_error():
    d, _ = make(FakeRay(), {"a": lambda unit: Ref(ready=False), "b": lambda unit: Ref(ready=False)}, stall=0.2)
    with pytest.raises(WorkerError, match="no Ray worker finished anything") as e:
        list(d)
    assert e.value.resumable


def test_a_lost_worker_has_its_units_resent():
    lost = {"count": 0}

    def a(unit):
        lost["count"] += 1
        return (
            Ref(ActorLostError("worker died")) if lost["count"] == 1 else Ref(([("a", e) for e in unit.examples], 0.0))
        )

    d, _ = make(FakeRay(), {"a": a, "b": answer("b")}, stall=30)
    out = list(d)
    assert [g for g, _, _ in out] == [[0, 1], [2, 3], [4, 5]] and d.resent >= 1


def test_a_unit_that_kills_every_worker_is_named_while_the_cluster_is_up():
    d, _ = make(
        FakeRay(),
        {"a": lambda u: Ref(ActorLostError("x")), "b": lambda u: Ref(UnavailableError("x"))},
        stall=30,
        max_attempts=3,
    )
    with pytest.raises(WorkerError, match=r"examples 0\.\.1: lost with 3 workers while the cluster stayed up") as e:
        list(d)
    assert not e.value.resumable


def test_a_lost_cluster_is_told_apart_from_a_crashing_example():
    """The head refuses connections (a closed port): the error says the cluster was lost, is resumable, and the
    actors are not killed (Ray calls would wait for the head)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    ray = FakeRay()
    d, _ = make(
        ray, {"a": lambda u: Ref(ActorLostError("x")), "b": lambda u: Ref(ActorLostError("x"))}, stall=30, gcs=address
    )
    with pytest.raises(WorkerError, match="the Ray cluster was lost") as e:
        list(d)
    assert e.value.resumable and d.cluster_lost and ray.killed == []


def test_a_split_example_is_answered_from_all_its_pieces_in_unit_order():
    items, units = plan([7, 8], 1, "certify", 1000, 5000, 2000, 1000)
    seen = {}

    def finish(item, examples, parts):
        seen[item] = [(u.phase, u.block, u.n) for u, _ in parts]
        return [sum(value for _, value in parts)]

    piece = lambda unit: Ref((unit.n, 0.001))  # noqa: E731 - the count of a piece: its samples
    d, _ = make(FakeRay(), {"a": piece, "b": piece}, units=(items, units), finish=finish)
    out = list(d)
    assert [(g, a) for g, a, _ in out] == [([7], [6000]), ([8], [6000])]
    assert seen[0] == [(0, 0, 1000), (1, 0, 2000), (1, 2, 2000), (1, 4, 1000)]


def test_every_worker_lost_and_never_back_ends_in_one_resumable_error():
    """Both worker nodes lost: Ray keeps restarting their actors, which never find room (asked again and
    again: unavailable). Nothing progresses for the stall timeout: one resumable error, no hang."""
    asked = {"a": 0, "b": 0}

    def ready(actor):
        asked[actor] += 1
        if asked[actor] == 1:
            return Ref({"host": "h", "pid": actor, "device": "cpu", "batch_size": 10})
        return Ref(UnavailableError("restarting"))

    lost = lambda unit: Ref(UnavailableError("node died"))  # noqa: E731
    d, _ = make(FakeRay(), {"a": lost, "b": lost}, stall=0.3, ready=ready)
    with pytest.raises(WorkerError, match=r"no Ray worker finished anything.*2 restarting") as e:
        list(d)
    assert e.value.resumable and asked["a"] > 2
