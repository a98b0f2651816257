"""The GPU check, in one command (issue 29): facts, shape changes, the device noise's law, CERTIFY as the CLI runs
it in every mode, the strongest PyTorch on the same weights, bare ceilings; then ``pytest -m gpu``.

    bash benchmarks/gpu_check.sh OUT_DIR [--budget 480]   # on a GPU machine, after staging onnxruntime-gpu
    bash benchmarks/gpu_check.sh OUT_DIR --dry-run        # anywhere: tiny sizes on the CPU (run by the test suite)

It writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/GPU.md`` after every step, so that a check cut short still
leaves what it found, and skips the remaining steps (recorded "out of budget") once ``--budget`` seconds are
spent. Steps, in order (``--skip NAME`` leaves one out):

1. ``facts``: the card (name, SXM/PCIe, driver, power limit, PCIe link), onnxruntime/torch/cuDNN versions,
   the providers that work, whether TensorRT (``libnvinfer.so.10``) is present;
2. ``shape_changes``: seconds of a new input shape per ``cudnn_conv_algo_search`` (ResNet-110), and each
   search's steady rate (the measurement that picks the default);
3. ``device_noise``: KS against N(0, 1) for two very different inputs, fresh per call; the CUDA-graph replay
   demonstration and rs-onnx's refusal of device noise in a CUDA graph;
4. ``certify_resnet110`` / ``torch_resnet110`` and 5. ``certify_resnet50`` / ``torch_resnet50``: CERTIFY of
   one image as ``rs-onnx certify`` runs it (host pageable, HEURISTIC, CUDA graph, device noise, pinned host
   ring, device noise with fp16 NHWC), bare ceilings with TFLOP/s, and PyTorch eager fp32, channels_last +
   AMP fp16 and torch.compile (last);
6. ``correctness``: ``pytest -m gpu`` (tests/test_gpu.py), each test's outcome.
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


def correctness_step(ctx) -> dict:
    return correctness(ctx.work.parent, ctx.dry, max(60.0, ctx.left()))


# (arch, n, batch) per CERTIFY step: ResNet-110 at n = 100,000 (the target's n), ResNet-50 at 20,000 (s/img at
# 100,000 extrapolated from its rate, said so in the JSON); a dry run uses the digits model, tiny.
SIZES = {
    False: {"resnet110": ("resnet110", 100_000, 1024), "resnet50": ("resnet50", 20_000, 256)},
    True: {"resnet110": ("digits_cnn", 2_000, 256), "resnet50": ("digits_cnn", 1_000, 128)},
}


def steps(dry: bool) -> list:
    """(name, function of the Context) in the order they run."""
    from benchmarks import gpu_steps as g

    out = [("facts", g.facts), ("shape_changes", g.shape_changes), ("device_noise", g.device_noise)]
    for slot in ("resnet110", "resnet50"):
        arch, n, batch = SIZES[dry][slot]
        out.append((f"certify_{slot}", lambda c, a=arch, n=n, b=batch: g.certify_modes(c, a, n, b)))
        out.append((f"torch_{slot}", lambda c, a=arch, n=n // 4 if dry else n, b=batch: g.torch_loops(c, a, n, b)))
    out.append(("correctness", correctness_step))
    return out


def targets(result: dict) -> list[dict]:
    """Issue 29's targets at n = 100,000: ResNet-110 host noise >= 0.9 of the ceiling and <= 1.0 s/img in the
    fastest mode; ResNet-50 <= 5 s/img in the fastest mode; every mode against the strongest PyTorch."""
    rows = []
    for slot, limit in (("resnet110", 1.0), ("resnet50", 5.0)):
        c, t = result.get(f"certify_{slot}", {}), result.get(f"torch_{slot}", {})
        modes = {k: v for k, v in c.get("modes", {}).items() if "seconds_per_image_at_100k" in v}
        loops = {k: v for k, v in t.get("loops", {}).items() if "seconds_per_image_at_100k" in v}
        if not modes:
            continue
        fastest = min(modes, key=lambda k: modes[k]["seconds_per_image_at_100k"])
        torch_best = min(loops, key=lambda k: loops[k]["seconds_per_image_at_100k"]) if loops else None
        host = modes.get("host, pinned ring", modes.get("host (pageable)", {}))
        row = {
            "model": c.get("model"),
            "fastest_mode": fastest,
            "fastest_seconds_per_image": modes[fastest]["seconds_per_image_at_100k"],
            "seconds_target": limit,
            "seconds_target_met": modes[fastest]["seconds_per_image_at_100k"] <= limit,
            "host_over_ceiling": host.get("over_fp32_ceiling"),
            "strongest_pytorch": torch_best,
            "pytorch_seconds_per_image": loops[torch_best]["seconds_per_image_at_100k"] if torch_best else None,
            "modes_over_pytorch": {
                k: loops[torch_best]["seconds_per_image_at_100k"] / v["seconds_per_image_at_100k"]
                for k, v in modes.items()
            }
            if torch_best
            else {},
        }
        if slot == "resnet110":
            row["host_ceiling_target_met"] = (row["host_over_ceiling"] or 0) >= 0.9
        rows.append(row)
    return rows


def report(result: dict) -> str:
    """GPU.md: every step's figures in tables; what was skipped and why."""
    lines = [
        "# GPU check",
        "",
        f"`{result['command']}` on {result['date']}, {result.get('seconds', 0):.0f} s (git {result.get('git')}).",
    ]
    if result.get("dry_run"):
        lines += ["", "**Dry run on the CPU: tiny sizes, CUDA-only parts skipped; no figure here is a GPU's.**"]
    f = result.get("facts", {})
    lines += ["", "## Facts", ""]
    for key in ("device", "device_name", "session_providers", "card", "onnxruntime", "torch", "torch_cuda", "cudnn"):
        if key in f:
            lines.append(f"- {key}: {f[key]}")
    if "tensorrt" in f:
        lines.append(f"- TensorRT: {f['tensorrt']}")
    sc = result.get("shape_changes", {})
    if sc.get("algos"):
        lines += ["", f"## Shape changes ({sc['model']}, batches {sc['batches']})", ""]
        lines += ["| cudnn_conv_algo_search | first run s | shape change s | steady samples/s |", "|---|--:|--:|--:|"]
        for k, v in sc["algos"].items():
            if "steady_seconds" in v:
                lines.append(
                    f"| {k} | {v['first_run_seconds']:.3f} | {v['shape_change_seconds']:.3f} | "
                    f"{v['samples_per_s_at_batch']:,.0f} |"
                )
            else:
                lines.append(f"| {k} | {v.get('skipped')} | | |")
        lines.append(
            f"\nFastest steady: {sc.get('fastest_steady')}; cheapest shape change: {sc.get('cheapest_shape_change')}."
        )
    dn = result.get("device_noise", {})
    if dn.get("cases"):
        lines += ["", "## Device noise", ""]
        lines += [
            "| input | KS p (call 1, 2) | mean | std | share differing between calls | ok |",
            "|---|---|---|---|--:|---|",
        ]
        for k, v in dn["cases"].items():
            lines.append(
                f"| {k} | {', '.join(f'{p:.3g}' for p in v['ks_p'])} | {', '.join(f'{m:.4f}' for m in v['mean'])} | "
                f"{', '.join(f'{sd:.4f}' for sd in v['std'])} | {v['share_differing_between_calls']:.4f} | {v['law_ok']} |"
            )
        lines.append(
            f"\nCUDA graph replay: {dn.get('cuda_graph_replay')}; device noise in a CUDA graph refused: "
            f"{dn.get('cuda_graph_with_device_noise_refused')}."
        )
    for slot in ("resnet110", "resnet50"):
        c, t = result.get(f"certify_{slot}", {}), result.get(f"torch_{slot}", {})
        if not c.get("modes"):
            continue
        lines += ["", f"## CERTIFY, {c['model']} (n = {c['n']:,}, batch {c['batch']})", ""]
        lines += [
            "| mode | prepare s | samples/s | / fp32 ceiling | s/img at n = 100k | predict, nA |",
            "|---|--:|--:|--:|--:|---|",
        ]
        for k, v in c["modes"].items():
            if "samples_per_s" in v:
                lines.append(
                    f"| {k} | {v['prepare_seconds']:.2f} | {v['samples_per_s']:,.0f} | {v['over_fp32_ceiling']:.2f} | "
                    f"{v['seconds_per_image_at_100k']:.3g}{' (extrapolated)' if v['extrapolated'] else ''} | "
                    f"{v['predict']}, {v['nA']} |"
                )
            else:
                lines.append(f"| {k} | {v.get('skipped') or v.get('error')} | | | | |")
        for k, v in c.get("ceilings", {}).items():
            if "samples_per_s" in v:
                lines.append(f"\nCeiling {k}: {v['samples_per_s']:,.0f} samples/s, {v['tflops']:.2f} TFLOP/s.")
        for k, v in t.get("loops", {}).items():
            what = (
                f"{v['samples_per_s']:,.0f} samples/s, {v['seconds_per_image_at_100k']:.3g} s/img"
                if "samples_per_s" in v
                else v.get("skipped") or v.get("error")
            )
            lines.append(f"- PyTorch {k}: {what}")
    if result.get("targets"):
        lines += ["", "## Targets (n = 100,000)", "", "```", json.dumps(result["targets"], indent=1), "```"]
    cor = result.get("correctness", {})
    if cor.get("tests"):
        lines += ["", "## pytest -m gpu", "", "| test | outcome | note |", "|---|---|---|"]
        lines += [f"| {k} | {v['outcome']} | {v['message'][:200]} |" for k, v in cor["tests"].items()]
    for name, v in result.items():
        if isinstance(v, dict) and ("error" in v or "skipped" in v) and len(v) <= 2:
            lines.append(f"- step {name}: {v.get('skipped') or v.get('error', '')[-600:]}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bash benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="folder for gpu_check.json, GPU.md and the test outputs")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU provider (no GPU needed)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (the tail is skipped)")
    ap.add_argument("--skip", action="append", default=[], help="a step to leave out (repeatable)")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_steps import Context
    from benchmarks.machine import _git_commit

    t0 = time.perf_counter()
    ctx = Context("cpu" if args.dry_run else "cuda", args.dry_run, time.time() + args.budget, out / "models")
    result: dict = {
        "command": "bash benchmarks/gpu_check.sh" + (" --dry-run" if args.dry_run else ""),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "budget_seconds": args.budget,
        "git": _git_commit(),
    }

    def save() -> None:
        result["seconds"] = time.perf_counter() - t0
        tmp = out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        os.replace(tmp, out / "gpu_check.json")
        (out / "GPU.md").write_text(report(result))

    for name, step in steps(args.dry_run):
        if name in args.skip:
            result[name] = {"skipped": "--skip"}
        elif ctx.left() < 10:
            result[name] = {"skipped": "out of budget"}
        else:
            print(f"gpu check: {name} ({ctx.left():.0f} s left) ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            try:
                result[name] = step(ctx)
            except Exception:  # noqa: BLE001 - recorded; the next step runs
                result[name] = {"error": traceback.format_exc(limit=8)}
            result.setdefault("step_seconds", {})[name] = time.perf_counter() - t
        result["targets"] = targets(result)
        save()
    ok = bool(result.get("facts", {}).get("cuda_proven")) or args.dry_run
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v and len(v) == 1]
    cor = result.get("correctness", {})
    ok = ok and not failed and cor.get("returncode", 0) == 0
    print(
        f"gpu check: wrote {out / 'gpu_check.json'} and {out / 'GPU.md'} in {result['seconds']:.0f} s; "
        f"{'passed' if ok else 'FAILED ' + ', '.join(failed)}",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
