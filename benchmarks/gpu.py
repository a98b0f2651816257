"""The GPU check, in one command: prove the CUDA provider, check the CUDA path, measure it against the targets.

    bash benchmarks/gpu_check.sh OUT_DIR            # on a GPU machine (~6 min on an H200)
    bash benchmarks/gpu_check.sh OUT_DIR --dry-run  # anywhere: tiny sizes on the CPU (run by the test suite)

Writes into OUT_DIR, after each step (so that a check cut short still leaves what it found):

1. ``gpu_check.json`` "provider": a session whose ``get_providers()`` starts with CUDA, the GPU's name, versions;
2. "correctness": ``pytest -m gpu`` (tests/test_gpu.py: CPU against CUDA, IO binding, fixed batch and CUDA
   graph against each other, on-device noise against N(0, sigma^2), fp16 recorded, out-of-memory halving),
   each test's outcome and what it measured;
3. "speed": :func:`benchmarks.run.bench_model` for ResNet-110 (CIFAR size) and ResNet-50 (ImageNet size):
   rs-onnx CERTIFY with host noise, CUDA graphs, fp16 and device noise, against the bare onnxruntime CUDA
   loop (the ceiling) and Cohen et al.'s sampling loop in PyTorch CUDA eager on the same GPU; seconds per image
   at n = 100,000 are extrapolated from the measured rate at a shorter n (stated);

and ``GPU.md``, the report with every target's figure. A step that fails is recorded and the next one runs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N0, N_TARGET = 100, 100_000
# (model, n, rounds) of the speed step: n large enough that the first batch and the probe do not dominate.
SPEED = {False: (("resnet110", 100_000, 1), ("resnet50", 20_000, 1)), True: (("digits_cnn", 300, 1),)}
TARGET_SECONDS = {"resnet110": 1.5, "resnet50": 15.0}
COHEN_SECONDS = {"resnet110": 15.0, "resnet50": 150.0}


def provider_facts(device: str) -> dict:
    """Versions, the providers onnxruntime lists and those that work, and one session on ``device``."""
    import numpy as np
    import onnxruntime as ort

    from benchmarks.machine import gpu_query
    from rs_onnx import OnnxClassifier
    from rs_onnx.devices import working_providers
    from rs_onnx.run import bundled

    facts: dict = {
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "available_providers": ort.get_available_providers(),
        "working_providers": working_providers(),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
        facts["torch_cuda_available"] = torch.cuda.is_available()
    except ImportError:
        facts["torch"] = None
    clf = OnnxClassifier(bundled("digits_cnn.onnx"), device=device)
    facts.update(
        device=clf.device,
        session_providers=clf.providers,
        device_name=clf.device_name,
        cuda_proven=clf.providers[0] == "CUDAExecutionProvider",
    )
    facts["nvidia_smi"] = gpu_query("name,memory.total,driver_version") or "not available (no nvidia-smi)"
    return facts


def correctness(out: Path, dry_run: bool, timeout: float) -> dict:
    """``pytest -m gpu``: each test's outcome (passed, failed with its message, skipped with the reason)."""
    xml, facts = out / "gpu-tests.xml", out / "gpu-facts.jsonl"
    facts.unlink(missing_ok=True)
    env = {
        **os.environ,
        "RS_ONNX_GPU_FACTS": str(facts),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    if dry_run:
        env["RS_ONNX_GPU_DRY_RUN"] = "1"
    t = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "test_gpu.py"),
            f"--junitxml={xml}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    tests = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error"}.get(child.tag, "skipped")
                message = " ".join((child.get("message") or child.text or "").split())[:600]
        tests[case.get("name")] = {"outcome": outcome, "message": message}
    measured = [json.loads(line) for line in facts.read_text().splitlines()] if facts.exists() else []
    return {
        "returncode": proc.returncode,
        "seconds": time.perf_counter() - t,
        "tests": tests,
        "measured": measured,
        "output_tail": proc.stdout[-3000:] + proc.stderr[-2000:],
    }


def speed(device: str, dry_run: bool, deadline: float) -> dict:
    """:func:`benchmarks.run.bench_model` per model while time remains; the ``res`` of benchmarks.run."""
    from benchmarks import run as bench

    args = bench.parse_args(
        [
            "--device",
            device,
            "--pairs",
            "1" if dry_run else "2",
            "--scaling-model",
            "none",
            "--work-dir",
            str(ROOT / "benchmarks" / "out"),
        ]
        + (["--no-ort-defaults", "--no-torch-probe"] if dry_run else [])
    )
    threads = os.cpu_count() or 1
    res = {
        "command": "bash benchmarks/gpu_check.sh" + (" --dry-run" if dry_run else ""),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "quick": dry_run,
        "threads": threads,
        "pairs": args.pairs,
        "machine": bench.machine(),
        "models": [],
        "skipped": {},
        "errors": {},
    }
    t0 = time.perf_counter()
    for arch, n, rounds in SPEED[dry_run]:
        if time.time() > deadline:
            res["skipped"][arch] = "out of time"
            continue
        try:
            res["models"].append(bench.bench_model(arch, args, bench.Setting(n, rounds), threads))
        except Exception as err:  # noqa: BLE001 - recorded; the next model runs
            res["errors"][arch] = traceback.format_exc(limit=6)[-2000:]
            print(f"speed {arch}: {err}", file=sys.stderr)
    res["seconds"] = time.perf_counter() - t0
    res["load_average_end"] = list(os.getloadavg())
    return res


def targets(res: dict) -> list[dict]:
    """Per model: rs / ceiling (host noise, >= 0.9), seconds per image at n = 100,000 per mode, the fastest
    mode against its target and Cohen et al., and rs-onnx against PyTorch on the same device."""
    rows = []
    for m in res.get("models", []):
        sps, ratios = m["samples_per_second"], m["ratios"]
        per_image = {
            ("host" if k == "rs" else k[3:]): (N0 + N_TARGET) / v["median"]
            for k, v in sps.items()
            if k.startswith("rs")
        }
        fastest = min(per_image, key=per_image.__getitem__) if per_image else None
        reproducible = {k: v for k, v in per_image.items() if k != "device-noise"}
        torch_key = "pytorch_best" if "pytorch_best" in sps else "pytorch"
        row = {
            "model": m["model"],
            "n_measured": m["n"],
            "batch": m["batch"],
            "rs_over_ceiling_host": ratios.get("rs/ceiling", {}).get("median"),
            "seconds_per_image_at_100k": per_image,
            "fastest_mode": fastest,
            "fastest_reproducible_mode": min(reproducible, key=reproducible.__getitem__) if reproducible else None,
            "pytorch_seconds_per_image_at_100k": (N0 + N_TARGET) / sps[torch_key]["median"]
            if torch_key in sps
            else None,
            "rs_over_pytorch": {k: v["median"] for k, v in ratios.items() if k.endswith("/" + torch_key)},
            "variant_errors": m.get("variant_errors", {}),
        }
        c = row["rs_over_ceiling_host"]
        row["ceiling_target_met"] = c is not None and c >= 0.9
        if m["model"] in TARGET_SECONDS and fastest:
            row["target_seconds"] = TARGET_SECONDS[m["model"]]
            row["time_target_met"] = per_image[fastest] <= TARGET_SECONDS[m["model"]]
            row["speedup_over_cohen"] = COHEN_SECONDS[m["model"]] / per_image[fastest]
        rows.append(row)
    return rows


def report(result: dict) -> str:
    """GPU.md: what was proven, checked and measured, with every target's figure."""
    p, c, s = result.get("provider", {}), result.get("correctness", {}), result.get("speed", {})
    lines = [
        "# GPU check",
        "",
        f"`{result['command']}` on {result['date']}, {result['seconds']:.0f} s in all (git {result.get('git')}).",
        "",
        "## 1. Provider",
        "",
    ]
    if "error" in p:
        lines.append(f"FAILED: {p['error'][-500:]}")
    else:
        lines += [
            f"- device: {p.get('device')} ({p.get('device_name')}); session providers: "
            f"{', '.join(p.get('session_providers', []))}; CUDA proven: **{p.get('cuda_proven')}**",
            f"- nvidia-smi: {p.get('nvidia_smi')}",
            f"- onnxruntime {p.get('onnxruntime')}, numpy {p.get('numpy')}, torch {p.get('torch')} "
            f"(CUDA {p.get('torch_cuda')}), Python {p.get('python')}",
        ]
    lines += ["", "## 2. Correctness (`pytest -m gpu`, tests/test_gpu.py)", ""]
    if "error" in c:
        lines.append(f"FAILED to run: {c['error'][-500:]}")
    else:
        lines += ["| test | outcome | note |", "|---|---|---|"]
        for name, t in c.get("tests", {}).items():
            lines.append(f"| {name} | {t['outcome']} | {t['message'][:200]} |")
        lines += ["", "Measured:", ""] + [f"- {json.dumps(m)}" for m in c.get("measured", [])]
    lines += ["", "## 3. Speed (one CERTIFY of one image, n0 = 100, alpha = 0.001, sigma = 0.25)", ""]
    if "error" in s:
        lines.append(f"FAILED: {s['error'][-800:]}")
    elif s.get("models"):
        from benchmarks.report import markdown

        body = markdown({**s, "command": result["command"], "seconds": s.get("seconds", 0.0)})
        lines += [
            line.replace("# rs-onnx benchmarks", "### Side by side (benchmarks.run)")
            for line in body.splitlines()
            if not line.startswith("Generated by")
        ]
    for name, why in {**s.get("skipped", {}), **s.get("errors", {})}.items():
        lines.append(f"- {name}: not measured: {why[-600:]}")
    lines += [
        "",
        "## Targets",
        "",
        "Seconds per image at n = 100,000 = (n0 + 100,000) / the median rate measured at the shorter n above.",
        "",
        "| model | n measured | rs / ceiling, host noise (>= 0.9) | s/img at n = 100k: host, cuda-graph, fp16, "
        "device-noise | fastest | target | met | vs Cohen et al. | PyTorch s/img | rs / PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result.get("targets", []):
        spi = t["seconds_per_image_at_100k"]
        modes = ", ".join(f"{spi[k]:.3g}" if k in spi else "-" for k in ("host", "cuda-graph", "fp16", "device-noise"))
        ratio = ", ".join(f"{k.split('/')[0]}: {v:.2f}" for k, v in t["rs_over_pytorch"].items())
        c = t["rs_over_ceiling_host"]
        lines.append(
            f"| {t['model']} | {t['n_measured']:,} | {c if c is None else round(c, 3)} "
            f"({'met' if t['ceiling_target_met'] else 'NOT met'}) | {modes} | {t['fastest_mode']} | "
            f"{t.get('target_seconds', '-')} s | {'met' if t.get('time_target_met') else 'NOT met'} | "
            f"{t.get('speedup_over_cohen', 0):.3g}x | {t['pytorch_seconds_per_image_at_100k'] or 0:.3g} | "
            f"{ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bash benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="folder for gpu_check.json, GPU.md and the test outputs")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU provider (no GPU needed)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the whole check (speed stops early)")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    start, t0 = time.time(), time.perf_counter()
    device = "cpu" if args.dry_run else "cuda"
    from benchmarks.machine import _git_commit

    result: dict = {
        "command": "bash benchmarks/gpu_check.sh" + (" --dry-run" if args.dry_run else ""),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "git": _git_commit(),
    }

    def save() -> None:
        result["seconds"] = time.perf_counter() - t0
        (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (out / "GPU.md").write_text(report(result))

    steps = [
        ("provider", lambda: provider_facts(device)),
        ("correctness", lambda: correctness(out, args.dry_run, max(60.0, 0.45 * args.budget))),
        ("speed", lambda: speed(device, args.dry_run, start + args.budget)),
    ]
    for name, step in steps:
        print(f"gpu check: {name} ...", file=sys.stderr, flush=True)
        try:
            result[name] = step()
        except Exception:  # noqa: BLE001 - recorded; the next step runs
            result[name] = {"error": traceback.format_exc(limit=8)}
        if name == "speed" and "models" in result[name]:
            result["targets"] = targets(result[name])
        save()
    ok = result["provider"].get("cuda_proven") or args.dry_run
    ok = ok and result.get("correctness", {}).get("returncode") == 0
    print(
        f"gpu check: wrote {out / 'gpu_check.json'} and {out / 'GPU.md'} in {result['seconds']:.0f} s; "
        f"{'passed' if ok else 'FAILED'}",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
