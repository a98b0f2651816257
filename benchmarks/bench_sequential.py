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
from rs_onnx.boundaries import operating

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


# ------------------------------------------------------------------------------------------ the anchors' table

MIRRORS = "/work/.mirror"
"""Where the fetch tool puts the anchors' published code (git directories; read at run time, never copied)."""


def mirror_module(repo: str, path: str, name: str, mirrors: str = MIRRORS):
    """Import ``path`` of the mirrored git repository ``repo`` (owner+name) as module ``name``, from its HEAD."""
    import subprocess
    import types

    source = subprocess.check_output(["git", "-C", f"{mirrors}/{repo}/repo", "show", f"HEAD:{path}"], text=True)
    module = types.ModuleType(name)
    module.__file__ = f"{mirrors}/{repo}/repo/{path}"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def voracek_rule(t: float, alpha: float, n: int, mirrors: str = MIRRORS):
    """Voracek et al. 2024's betting thresholds (vvoracek/RS_conf_seq, thresholds.get_thresholds) for target t:
    (lower, upper) per sample count N; their certify() stops at N with A == upper[N] (certified) or
    A == lower[N] (not), the label's count A among N samples (no selection)."""
    th = mirror_module("vvoracek+RS_conf_seq", "thresholds.py", "voracek_thresholds", mirrors)
    lower, upper = th.get_thresholds(p=t, alpha=alpha, n=n + 1)
    return np.asarray(lower, np.int64), np.asarray(upper, np.int64)


def sample_by_sample(lower: np.ndarray, upper: np.ndarray, p: float, n: int, n0: int = 0) -> dict:
    """Exact DP of a rule that looks after every sample: stop at N when A >= upper[N] (certified) or A <= lower[N]
    (A ~ Bin(N, p)); runs end at n. Returns P(certify), mean and p90 samples (n0 added). The distribution is
    kept on the counts still running (offset ``lo``), so a step costs the width of the continuation region."""
    dist, lo = np.ones(1), 0  # dist[i] = P(A = lo + i, still running)
    cert, stop = 0.0, np.zeros(n + 1)
    for m in range(1, n + 1):
        nxt = np.zeros(len(dist) + 1)
        nxt[:-1] += dist * (1 - p)
        nxt[1:] += dist * p
        dist = nxt
        u, f = int(upper[m]) - lo, int(lower[m]) + 1 - lo  # certified from index u, given up below f
        up = float(dist[max(0, u) :].sum()) if u < len(dist) else 0.0
        down = float(dist[: max(0, f)].sum())
        cert += up
        stop[m] = up + down
        keep_hi = min(len(dist), max(0, u))
        keep_lo = min(keep_hi, max(0, f))
        dist, lo = dist[keep_lo:keep_hi], lo + keep_lo
        if dist.size == 0 or dist.sum() < 1e-15:
            break
    stop[m] += float(dist.sum())
    return _summary(cert, stop, np.arange(n + 1) + n0)


def _summary(cert: float, stop: np.ndarray, samples: np.ndarray) -> dict:
    cdf = np.cumsum(stop) / stop.sum()
    return {
        "p_certify": float(cert),
        "mean": float(np.dot(stop, samples) / stop.sum()),
        "p90": int(samples[np.searchsorted(cdf, 0.9)]),
    }


def horvath_rule(sigma: float, r: float, p: float, alpha: float, beta: float, n0: int, n_list, mirrors: str = MIRRORS):
    """Horvath et al. 2022's adaptive sampling (eth-sri/smoothing-ensembles, SmoothEnsembleAdaptive.certify):
    rounds of n0 selection and n_i fresh estimation samples, Clopper-Pearson at alpha / rounds, stop when its
    upper bound at 2 beta / (rounds - 1) rules r out. Their own methods, evaluated on every count (exact; the
    selection is taken to be right, which favours them)."""
    import scipy.stats

    if not hasattr(scipy.stats, "binom_test"):  # imported by their module, unused by certify (removed in scipy 1.12)
        scipy.stats.binom_test = None
    mod = mirror_module("eth-sri+smoothing-ensembles", "smooth_ensemble_adaptive.py", "horvath_adaptive", mirrors)
    smooth = mod.SmoothEnsembleAdaptive([], 10, sigma)
    alive, cert, stop, spent = 1.0, 0.0, [], []
    total = 0
    for i, n in enumerate(n_list):
        total += n0 + n
        k = np.arange(n + 1)
        pmf = binom.pmf(k, n, p)
        lower = smooth._lower_confidence_bound(k, n, alpha / len(n_list))
        radius = sigma * norm.ppf(lower)
        ok = (lower > 0.5) & (radius >= r)
        give_up = np.zeros(n + 1, bool)
        if i < len(n_list) - 1:
            give_up = ~ok & np.array([smooth._should_stop(int(j), n, beta, len(n_list), r) for j in k])
        cert += alive * pmf[ok].sum()
        ended = alive * (pmf[ok].sum() + pmf[give_up].sum()) if i < len(n_list) - 1 else alive
        stop.append(ended)
        spent.append(total)
        alive -= ended
    return _summary(cert, np.asarray(stop), np.asarray(spent))


def rs_onnx_rule(sigma: float, r: float, p: float, alpha: float, n: int, guess: str, trials: int, seed: int = 0):
    """rs-onnx --sequential on Bernoulli(p) streams: the selection rule (stats.selection_sizes, select_clear; 10
    classes, the others sharing 1 - p) and run_looks on the plan the CLI makes (the label's or the guess's
    counts, binomial per stage). Returns P(certify r), mean and p90 samples (selection included)."""
    rng = np.random.default_rng(seed)
    sched = sq.geometric_schedule(n, alpha, final_share=sq.FINAL_SHARE)
    plan = sq.make_plan(sched, sigma, (r,), 0.01, calibrate=True)
    probs = np.array([p] + [(1 - p) / 9] * 9)
    sel = np.zeros(trials, np.int64)
    right = np.ones(trials, bool)
    if guess == "select":
        counts = np.zeros((trials, 11), np.int64)
        active, prev = np.arange(trials), 0
        for size in stats.selection_sizes(100):
            counts[active, :10] += rng.multinomial(size - prev, probs, len(active))
            sel[active] = size
            prev = size
            active = active[~stats.select_clear(counts[active])]
        right = stats.select_many(counts) == 0
    q = np.where(right, p, (1 - p) / 9)
    sizes = np.asarray(sched.sizes)
    draws = rng.binomial(np.diff(sizes, prepend=0)[None, :], q[:, None])
    out = sq.run_looks(plan, lambda j, idx: draws[idx, j], np.arange(trials), trials)
    total = sel + out.n
    return {
        "p_certify": float(np.mean(out.certified > plan.radii.index(r))),
        "mean": float(total.mean()),
        "p90": int(np.percentile(total, 90)),
    }


def rs_onnx_false_rate(sigma: float, r: float, alpha: float, n: int, trials: int, seed: int = 0) -> tuple[float, float]:
    """At pA = the threshold of r: (exact P(certify r) with the stopping rules, by DP; simulated rate over
    ``trials`` runs of run_looks)."""
    sched = sq.geometric_schedule(n, alpha, final_share=sq.FINAL_SHARE)
    plan = sq.make_plan(sched, sigma, (r,), 0.01, calibrate=True)
    i = plan.radii.index(r)
    t = sq.calibration_threshold(r, sigma)
    sizes = np.asarray(sched.sizes)
    low = np.maximum(plan.k_fail[:, i], sizes - plan.slack[:, i] - 1)
    exact = operating(sched.sizes, plan.k_cert[:, i], low, t)[0]
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, trials, 20_000):
        m = min(20_000, trials - start)
        draws = rng.binomial(np.diff(sizes, prepend=0)[None, :], t, (m, len(sizes)))
        out = sq.run_looks(plan, lambda j, idx, d=draws: d[idx, j], np.arange(m), m)
        hits += int(np.sum(out.certified > i))
    return exact, hits / trials


def fixed_edge(n: int, alpha: float, sigma: float, r: float) -> float:
    """The pA at which fixed-n CERTIFY certifies r with probability 1/2."""
    lo, hi = float(norm.cdf(r / sigma)), 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fixed_power(n, alpha, sigma, r, mid) < 0.5 else (lo, mid)
    return hi


def cmd_table(args) -> None:
    """The extended table of issue 28 (Markdown on stdout; one row per (sigma, r, pA))."""
    n, alpha = args.n, args.alpha
    print(
        "| sigma | r | pA | fixed n: P(cert) | rs-onnx select: mean / p90 / P(cert) | rs-onnx label: mean / p90 / "
        "P(cert) | Voracek 2024 (label): mean / p90 / P(cert) | Horvath 2022: mean / p90 / P(cert) |"
    )
    print("|---|---|---|--:|--:|--:|--:|--:|")
    for sigma in args.sigmas:
        for r in args.radii:
            t = float(norm.cdf(r / sigma))
            lower, upper = voracek_rule(t, alpha, n, args.mirrors)
            edge = fixed_edge(n, alpha, sigma, r)
            grid = sorted({*args.pas, round(edge, 5), round(t, 5)})
            for p in grid:
                cells = [f"{fixed_power(n, alpha, sigma, r, p):.3f}"]
                for guess in ("select", "label"):
                    o = rs_onnx_rule(sigma, r, p, alpha, n, guess, args.trials)
                    cells.append(f"{o['mean']:,.0f} / {o['p90']:,} / {o['p_certify']:.3f}")
                v = sample_by_sample(lower, upper, p, n)
                cells.append(f"{v['mean']:,.0f} / {v['p90']:,} / {v['p_certify']:.3f}")
                h = horvath_rule(sigma, r, p, alpha, 1e-4, 100, (1000, 10_000, n), args.mirrors)
                cells.append(f"{h['mean']:,.0f} / {h['p90']:,} / {h['p_certify']:.3f}")
                tag = " (threshold)" if p == round(t, 5) else " (fixed-n edge)" if p == round(edge, 5) else ""
                print(f"| {sigma} | {r} | {p}{tag} | " + " | ".join(cells) + " |", flush=True)


def cmd_false(args) -> None:
    """False certification at pA = the threshold: rs-onnx (exact DP and simulated with a 95% CI), the anchors
    (exact DPs of their rules)."""
    n, alpha = args.n, args.alpha
    print("| sigma | r | rs-onnx exact | rs-onnx simulated (95% CI) | Voracek 2024 exact | Horvath 2022 exact |")
    print("|---|---|--:|--:|--:|--:|")
    for sigma in args.sigmas:
        for r in args.radii:
            t = float(norm.cdf(r / sigma))
            exact, rate = rs_onnx_false_rate(sigma, r, alpha, n, args.trials)
            half = 1.96 * np.sqrt(max(rate, 1 / args.trials) * (1 - rate) / args.trials)
            lower, upper = voracek_rule(t, alpha, n, args.mirrors)
            v = sample_by_sample(lower, upper, t, n)["p_certify"]
            h = horvath_rule(sigma, r, t, alpha, 1e-4, 100, (1000, 10_000, n), args.mirrors)["p_certify"]
            print(
                f"| {sigma} | {r} | {exact:.2e} | {rate:.2e} ({max(0, rate - half):.1e}-{rate + half:.1e}, "
                f"{args.trials:,} runs) | {v:.2e} | {h:.2e} |",
                flush=True,
            )


def cmd_precision(args) -> None:
    """Precision mode on Bernoulli(pA) streams (the label's counts, run_looks): samples spent and the radius
    against fixed n's radius at the same alpha (both simulated, ``--trials`` runs)."""
    n, alpha, sigma, eps = args.n, args.alpha, args.sigma, args.eps
    sched = sq.geometric_schedule(n, alpha, final_share=sq.FINAL_SHARE)
    plan = sq.make_plan(sched, sigma, (), 0.01, eps)
    sizes = np.asarray(sched.sizes)
    rng = np.random.default_rng(0)
    print(f"| pA | mean samples | p90 | mean radius | fixed n = {n:,}: mean radius | shortfall > eps |")
    print("|---|--:|--:|--:|--:|--:|")
    for p in args.pas:
        draws = rng.binomial(np.diff(sizes, prepend=0)[None, :], p, (args.trials, len(sizes)))
        out = sq.run_looks(plan, lambda j, idx, d=draws: d[idx, j], np.arange(args.trials), args.trials)
        lower = stats.cp_lower(out.best_n_a, np.take(sizes, out.best_look), np.take(sched.alphas, out.best_look))
        radius = np.where((out.best_look >= 0) & (lower >= 0.5), stats.cohen_radii(lower, sigma), 0.0)
        fixed = stats.cohen_radii(stats.cp_lower(rng.binomial(n, p, args.trials), n, alpha), sigma)
        print(
            f"| {p} | {out.n.mean():,.0f} | {int(np.percentile(out.n, 90)):,} | {radius.mean():.3f} | "
            f"{fixed.mean():.3f} | {np.mean(radius < fixed - eps):.3f} |"
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("power", "run", "pilot", "simulate", "plan", "budget", "table", "false", "precision"):
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
        if name == "precision":
            s.add_argument("--eps", type=float, default=0.05)
            s.add_argument("--pas", type=float, nargs="+", default=[0.6, 0.74, 0.852, 0.92, 0.99, 0.9999])
            s.add_argument("--trials", type=int, default=5000)
        if name in ("table", "false"):
            s.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
            s.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 1.0])
            s.add_argument("--pas", type=float, nargs="+", default=[0.5, 0.6, 0.74, 0.852, 0.92, 0.99, 0.9999])
            s.add_argument("--trials", type=int, default=20_000 if name == "table" else 100_000)
            s.add_argument("--mirrors", default=MIRRORS)
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
        "table": cmd_table,
        "false": cmd_false,
        "precision": cmd_precision,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
