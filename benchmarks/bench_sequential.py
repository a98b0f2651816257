"""Sequential CERTIFY: power at the threshold (exact design, simulated looks) and the saving on real models.

    python -m benchmarks.bench_sequential power                         # power at pA near Phi(r / sigma)
    python -m benchmarks.bench_sequential run --mode radii --count 100  # bundled digits, sequential, n_max 1e5
    python -m benchmarks.bench_sequential run --mode fixed --count 100  # ... fixed n = 1e5 (the baseline)
    python -m benchmarks.bench_sequential run --model M.onnx --data D.npz --mean .. --std .. --count 50
    python -m benchmarks.bench_sequential pilot --start 500 --count 100 --n 2000 > P.json  # other images
    python -m benchmarks.bench_sequential simulate P.json --final-share 0.5 0.9  # designs on pilot pA
    python -m benchmarks.bench_sequential plan --count 100              # make_plan per run: cached or not

``power`` compares the probability of certifying radius r when pA is just above Phi(r / sigma): fixed n
(exact binomial tail at the Clopper-Pearson cutoff) against the sequential design (run_looks on simulated
binomial stages, 200,000 trials, standard error <= 0.0011). ``run`` prints one JSON line: certified
accuracy at the radii (Cohen's convention), samples per example (n0 + n) and the stop reasons. ``pilot``
and ``simulate`` tune the design on images disjoint from the measured ones. ``plan`` times the make_plan
calls of one CLI run of ``--count`` examples (its preflight and one per group), computed afresh at every call
(as before the plan cache; calibrated_cutoff's own cache kept) against the cached plan. Not part of the package.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

import numpy as np
from scipy.stats import binom, norm

from rs_onnx import sequential as sq
from rs_onnx import stats

RADII = (0.25, 0.5, 0.75, 1.0)


def fixed_power(n: int, alpha: float, sigma: float, r: float, p: float) -> float:
    """P(fixed-n CERTIFY certifies radius r) when pA = p: exact, from the Clopper-Pearson cutoff."""
    lo, hi = int(n * norm.cdf(r / sigma)) - 1, n + 1  # certifies at hi, not at lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok = stats.cohen_radius(stats.clopper_pearson_lower(mid, n, alpha), sigma) >= r
        lo, hi = (lo, mid) if ok else (mid, hi)
    return float(binom.sf(hi - 1, n, p)) if hi <= n else 0.0


def sequential_power(
    n: int,
    alpha: float,
    sigma: float,
    r: float,
    p: float,
    *,
    final_share: float,
    calibrate: bool,
    looks: int = sq.LOOKS,
    beta: float = 0.01,
    trials: int = 200_000,
    seed: int = 0,
    n_first: int | None = None,
    early: str = "betting",
) -> tuple[float, float]:
    """(P(sequential certifies r), mean estimation samples) when pA = p, by simulating the looks."""
    sched = sq.geometric_schedule(n, alpha, looks, n_first, final_share)
    plan = sq.make_plan(sched, sigma, RADII, beta, calibrate=calibrate, early=early)
    sizes = np.asarray(sched.sizes)
    draws = np.random.default_rng(seed).binomial(np.diff(sizes, prepend=0), p, (trials, len(sizes)))
    out = sq.run_looks(plan, lambda j, idx: draws[idx, j], np.arange(trials), trials)
    i = plan.radii.index(r)
    return float(np.mean(out.certified > i)), float(out.n.mean())


def cmd_power(args) -> None:
    n, alpha, sigma = args.n, args.alpha, args.sigma
    print(
        f"| radius | pA | fixed n = {n:,} | sequential before: union bound, 8 looks, share 0.5 | now: "
        f"calibrated, {args.looks} looks, share {args.final_share} | now - fixed |"
    )
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for r, p in ((0.75, 0.999), (0.75, 0.9992), (0.5, 0.9785), (0.5, 0.98), (0.25, 0.845), (0.25, 0.85)):
        f = fixed_power(n, alpha, sigma, r, p)
        old, _ = sequential_power(n, alpha, sigma, r, p, final_share=0.5, calibrate=False, looks=8, n_first=n // 100)
        new, _ = sequential_power(n, alpha, sigma, r, p, final_share=args.final_share, calibrate=True, looks=args.looks)
        worst = max(worst, f - new)
        print(f"| {r} | {p} | {f:.3f} | {old:.3f} | {new:.3f} | {new - f:+.3f} |")
    print(f"\nlargest shortfall of the calibrated design against fixed n: {worst:.3f}")


def _prepare(args):
    from rs_onnx.config import build_config
    from rs_onnx.run import bundled, prepare

    values = {
        "model": args.model or bundled("digits_cnn.onnx"),
        "data": args.data or bundled("digits_eval.npz"),
        "sigma": args.sigma,
        "n0": 100,
        "n": args.n,
        "alpha": args.alpha,
        "seed": 0,
        "batch_size": args.batch_size,
        "start": args.start,
        "end": args.start + args.count,
        "noise": args.noise,
    }
    if args.mean:
        values["mean"], values["std"] = list(args.mean), list(args.std)
    cfg, _ = build_config({}, values)
    return prepare(cfg)


def cmd_run(args) -> None:
    p = _prepare(args)
    rows, t0 = [], time.time()
    for g in range(0, len(p.indices), args.group):
        group = p.indices[g : g + args.group]
        xs = [p.data.image(i) for i in group]
        if args.mode == "radii":
            certs = sq.sequential_certify_many(
                p.smoothed, xs, group, 100, args.n, args.alpha, RADII, final_share=args.final_share, looks=args.looks
            )
        else:
            certs = p.smoothed.certify_many(xs, 100, args.n, args.alpha, group)
        for i, c in zip(group, certs):
            rows.append((int(p.data.labels[i]), c.predict, c.radius, c.n + c.n0, getattr(c, "stopped", "fixed")))
        print(f"{len(rows)} examples, {time.time() - t0:.0f} s", file=sys.stderr)
    label, pred, rad, samples, stopped = map(np.asarray, zip(*rows))
    ok = pred == label
    acc = {str(r): float(np.mean(ok & (rad >= r))) for r in (0.0, *RADII)}
    print(
        json.dumps(
            {
                "mode": args.mode,
                "model": args.model or "digits_cnn",
                "start": args.start,
                "count": len(rows),
                "n": args.n,
                "final_share": args.final_share,
                "certified_accuracy": acc,
                "samples_per_example": float(samples.mean()),
                "saving": float((100 + args.n) / samples.mean()),
                "stopped": dict(collections.Counter(stopped.tolist())),
                "seconds": time.time() - t0,
            }
        )
    )


def cmd_pilot(args) -> None:
    p = _prepare(args)
    xs = [p.data.image(i) for i in p.indices]
    certs = p.smoothed.certify_many(xs, 100, args.n, args.alpha, p.indices)
    print(json.dumps({"p": [c.n_a / c.n if c.guess >= 0 else 0.0 for c in certs]}))


def cmd_simulate(args) -> None:
    with open(args.pilot, encoding="utf-8") as f:
        ps = np.asarray(json.load(f)["p"])
    rng = np.random.default_rng(0)
    for share in args.final_share:
        for cal in (False, True):
            sched = sq.geometric_schedule(args.n, args.alpha, args.looks, None, share)
            plan = sq.make_plan(sched, args.sigma, RADII, 0.01, calibrate=cal)
            sizes = np.asarray(sched.sizes)
            pp = np.repeat(ps, 50)
            draws = rng.binomial(np.diff(sizes, prepend=0)[None, :], pp[:, None])
            out = sq.run_looks(plan, lambda j, idx, d=draws: d[idx, j], np.arange(len(pp)), len(pp))
            mean = out.n.mean() + 100
            print(
                f"looks {args.looks} share {share} calibrated {cal}: samples/example {mean:.0f}, "
                f"saving {(args.n + 100) / mean:.2f}x"
            )


def cmd_plan(args) -> None:
    from rs_onnx.config import RunConfig
    from rs_onnx.run import group_size

    calls = 1 + -(-args.count // group_size(RunConfig(sequential=True)))  # preflight + one per group
    sched = sq.geometric_schedule(args.n, args.alpha, args.looks, None, args.final_share)
    modes = {
        "radii": dict(radii=RADII, eps=None, calibrate=True),
        f"precision {args.eps}": dict(radii=(), eps=args.eps, calibrate=False),
    }
    for name, kw in modes.items():
        seconds: dict[str, list[float]] = {"afresh": [], "cached": []}
        for _ in range(args.repeat):
            for how in ("afresh", "cached"):
                sq.calibrated_cutoff.cache_clear()
                sq.clear_plan_cache()
                t0 = time.perf_counter()
                plans = []
                for _ in range(calls):
                    if how == "afresh":
                        sq.clear_plan_cache()
                    plans.append(
                        sq.make_plan(sched, args.sigma, kw["radii"], 0.01, kw["eps"], "gaussian", kw["calibrate"])
                    )
                seconds[how].append(time.perf_counter() - t0)
                assert all(np.array_equal(a.k_cert, plans[0].k_cert) for a in plans)
        fresh, cached = (float(np.median(seconds[h])) for h in ("afresh", "cached"))
        print(
            f"{name}: {calls} calls per run of {args.count} examples (n {args.n:,}, {len(sched.sizes)} looks): "
            f"afresh {fresh * 1e3:.1f} ms, cached {cached * 1e3:.1f} ms, saved {(fresh - cached) * 1e3:.1f} ms "
            f"({fresh / cached:.1f}x; median of {args.repeat})"
        )


COHEN_LOGS = "data/reference/cohen2019_certify_cifar10"


def cohen_pas(path, sigma: float = 0.5, n: int = 100_000, alpha: float = 0.001) -> tuple[np.ndarray, np.ndarray]:
    """Per image of Cohen et al.'s published CERTIFY log (N = 100,000, alpha = 0.001): (pA of the label, the
    log's own certified radius where correct, else 0). pA is the count k / n whose Clopper-Pearson bound gives
    the logged radius (rounded to 3 decimals in the log); an image g got wrong or abstained on gets pA 0.3
    for its label (it cannot certify its label; this only sets how fast it is given up)."""
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")][1:]
    p, radius = [], []
    ks = np.arange(n // 2, n + 1)
    bound = stats.cohen_radii(stats.cp_lower(ks, n, alpha), sigma)
    for row in rows:
        r, correct = float(row[3]), row[4] == "1"
        if not correct:
            p.append(0.3)
            radius.append(0.0)
            continue
        k = ks[min(len(ks) - 1, int(np.searchsorted(bound, r - 5e-4)))]  # smallest count whose radius rounds to r
        p.append(k / n)
        radius.append(r)
    return np.asarray(p), np.asarray(radius)


def even_split_accuracy(p: np.ndarray, per_image: int, r: float, sigma: float, alpha: float) -> float:
    """Expected certified accuracy at r of fixed-n CERTIFY of the label with ``per_image`` samples each (exact)."""
    return float(np.mean([fixed_power(per_image, alpha, sigma, r, q) for q in p]))


def budget_accuracy(
    p: np.ndarray, budget: int, r: float, sigma: float, alpha: float, n_max: int = 100_000, seed: int = 0
) -> tuple[float, float]:
    """(certified accuracy at r, samples spent) of the --budget run (``guess label``: no selection samples) on
    Bernoulli streams of the given pA, through run_looks (the code path of the CLI)."""
    sched = sq.geometric_schedule(n_max, alpha, final_share=sq.FINAL_SHARE)
    plan = sq.make_plan(sched, sigma, (r,), 0.01, calibrate=True)
    sizes = np.asarray(sched.sizes)
    draws = np.random.default_rng(seed).binomial(np.diff(sizes, prepend=0)[None, :], p[:, None])
    out = sq.run_looks(plan, lambda j, idx: draws[idx, j], np.arange(len(p)), len(p), budget)
    return float(np.mean(out.certified > plan.radii.index(r))), float(out.n.sum())


def cmd_budget(args) -> None:
    from pathlib import Path

    path = Path(args.shared) / COHEN_LOGS / f"noise_{args.sigma:.2f}_sigma_{args.sigma:.2f}.tsv"
    p, radius = cohen_pas(path, args.sigma, 100_000, args.alpha)
    r = args.radius
    logged = float(np.mean(radius >= r))
    even = even_split_accuracy(p, args.budget // len(p), r, args.sigma, args.alpha)
    runs = [budget_accuracy(p, args.budget, r, args.sigma, args.alpha, args.n, seed) for seed in range(args.seeds)]
    acc = np.array([a for a, _ in runs])
    print(
        f"{len(p)} images of {path.name}, r = {r}: Cohen's log (100,000 each): {logged:.3f}; even split "
        f"({args.budget // len(p):,} each, exact): {even:.3f}; --budget {args.budget:,}: {acc.mean():.3f} "
        f"(+- {acc.std(ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else 0:.3f}, {len(acc)} runs; "
        f"spent {np.mean([s for _, s in runs]):,.0f})"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("power", "run", "pilot", "simulate", "plan", "budget"):
        s = sub.add_parser(name)
        s.add_argument("--n", type=int, default=100_000)
        s.add_argument("--alpha", type=float, default=0.001)
        s.add_argument("--sigma", type=float, default=0.25)
        if name == "simulate":
            s.add_argument("pilot")
            s.add_argument("--final-share", type=float, nargs="+", default=[0.5, 0.9])
        else:
            s.add_argument("--final-share", type=float, default=0.9)
        s.add_argument("--looks", type=int, default=16)
        if name in ("run", "pilot"):
            s.add_argument("--model")
            s.add_argument("--data")
            s.add_argument("--mean", type=float, nargs="*")
            s.add_argument("--std", type=float, nargs="*")
            s.add_argument("--start", type=int, default=0)
            s.add_argument("--count", type=int, default=100)
            s.add_argument("--group", type=int, default=50)
            s.add_argument("--batch-size", type=int, default=1000)
            s.add_argument("--noise", default="gaussian")
            s.add_argument("--mode", choices=["radii", "fixed"], default="radii")
        if name == "budget":
            s.add_argument("--shared", default="../shared")
            s.add_argument("--budget", type=int, default=1_000_000)
            s.add_argument("--radius", type=float, default=0.5)
            s.add_argument("--seeds", type=int, default=20)
        if name == "plan":
            s.add_argument("--count", type=int, default=100)
            s.add_argument("--eps", type=float, default=0.05)
            s.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    commands = {
        "power": cmd_power,
        "run": cmd_run,
        "pilot": cmd_pilot,
        "simulate": cmd_simulate,
        "plan": cmd_plan,
        "budget": cmd_budget,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
