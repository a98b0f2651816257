"""Export a torch classifier to ONNX with a dynamic batch axis, record training facts, check parity.

The exported graph takes ``input`` float32 [batch, C, H, W] in [0,1] (normalisation is inside the graph)
and returns ``logits`` float32 [batch, num_classes]. After export the file is checked with
``onnx.checker`` and run with onnxruntime (CPU) at several batch sizes on random and on real inputs;
:class:`ParityError` is raised if logits or argmax differ from torch beyond tolerance.

Command line (untrained models at real size, for benchmarks)::

    python -m export.export_onnx --arch resnet110 --out runs/resnet110_untrained.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

log = logging.getLogger("export.export_onnx")  # not __name__: it is "__main__" under python -m

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_DESCRIPTION = "[0,1] NCHW float32"
PARITY_BATCH_SIZES = (1, 2, 7, 32)


class ParityError(RuntimeError):
    """onnxruntime's outputs differ from torch's beyond tolerance, or the batch axis is not dynamic."""


@dataclass(frozen=True)
class ParityReport:
    """max_abs_diff: largest |logit_ort - logit_torch| over all checks; argmax_agreement: fraction in [0,1]."""

    max_abs_diff: float
    argmax_agreement: float
    n_checked: int
    batch_sizes: tuple[int, ...]


def _export_dynamo(model: nn.Module, sample: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecations inside torch.export's pytree code
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )


def _export_legacy(model: nn.Module, sample: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )


def _has_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def set_metadata(path: str | Path, metadata: Mapping[str, object]) -> None:
    """Write ``metadata`` into the model's ``metadata_props`` (values stringified; existing keys replaced)."""
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: str(v) for k, v in metadata.items()})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict of strings."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def check_parity(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    real_inputs: np.ndarray | None = None,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> ParityReport:
    """Compare onnxruntime (CPU) with torch on random U[0,1] inputs and on ``real_inputs`` [N, C, H, W] in [0,1].

    Each batch size in ``batch_sizes`` is run on random inputs, and on the first rows of ``real_inputs``.
    Passes when every |logit difference| <= atol + rtol * max|logit| and the argmax agrees wherever torch's
    top-two gap exceeds that tolerance. Raises :class:`ParityError` otherwise.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    batches = [rng.random((b, *input_shape), dtype=np.float32) for b in batch_sizes]
    if real_inputs is not None and len(real_inputs):
        real = np.ascontiguousarray(real_inputs, dtype=np.float32)
        batches += [real[:b] for b in batch_sizes if b <= len(real)]
    was_training = model.training
    model.eval()
    worst, agree, total = 0.0, 0, 0
    try:
        for x in batches:
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            try:
                out = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            except Exception as err:  # onnxruntime raises its own exception types
                raise ParityError(f"onnxruntime failed at batch {len(x)}: {err}") from err
            if out.shape != ref.shape:
                raise ParityError(f"batch {len(x)}: onnxruntime output shape {out.shape}, torch {ref.shape}")
            tol = atol + rtol * float(np.abs(ref).max())
            diff = float(np.abs(out - ref).max())
            top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
            clear = (top2[:, 1] - top2[:, 0]) > tol
            same = out.argmax(1) == ref.argmax(1)
            worst, agree, total = max(worst, diff), agree + int(same.sum()), total + len(x)
            if diff > tol or not same[clear].all():
                raise ParityError(
                    f"batch {len(x)}: max |logit difference| {diff:.3g} (tolerance {tol:.3g}), "
                    f"argmax disagrees on {int((~same[clear]).sum())} of {int(clear.sum())} clear-cut rows"
                )
    finally:
        model.train(was_training)
    report = ParityReport(worst, agree / max(total, 1), total, tuple(batch_sizes))
    log.info("parity ok: max |diff| %.3g, argmax agreement %.4f over %d inputs", worst, report.argmax_agreement, total)
    return report


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    metadata: Mapping[str, object] | None = None,
    real_inputs: np.ndarray | None = None,
    exporter: str = "auto",
    opset: int | None = None,
    atol: float = 1e-4,
) -> ParityReport:
    """Export ``model`` ([N, *input_shape] in [0,1] -> logits) to ``path`` and check it.

    exporter: 'dynamo' (torch.export-based, opset 18 by default; needs onnxscript), 'legacy'
    (TorchScript-based, opset 17 by default), or 'auto' (dynamo when onnxscript is installed).
    The batch axis is named ``batch`` and is dynamic. ``metadata`` goes to ``metadata_props``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exporter == "auto":
        exporter = "dynamo" if _has_onnxscript() else "legacy"
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'legacy', got {exporter!r}")
    was_training = model.training
    model = model.cpu().eval()
    sample = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        if exporter == "dynamo":
            _export_dynamo(model, sample, path, opset or 18)
        else:
            _export_legacy(model, sample, path, opset or 17)
    finally:
        model.train(was_training)
    set_metadata(path, {"rs_onnx.input": INPUT_DESCRIPTION, **(metadata or {})})
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise ParityError(f"exported batch axis is fixed at {dim0.dim_value}, expected a dynamic axis")
    report = check_parity(model, path, input_shape, real_inputs, atol=atol)
    log.info("exported %s (%s exporter, %.0f KB)", path, exporter, path.stat().st_size / 1024)
    return report


def export_untrained(
    arch: str,
    path: str | Path,
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    exporter: str = "auto",
) -> ParityReport:
    """Export an ``arch`` model with random (untrained) weights, e.g. for throughput benchmarks.

    mean/std default to 0.5 / 0.25 per input channel. BatchNorm layers are in eval mode (running stats
    0 / 1), so the graph is what a trained model of that size would run.
    """
    from export.models import INPUT_SHAPES, build

    shape = INPUT_SHAPES[arch]
    mean = list(mean) if mean is not None else [0.5] * shape[0]
    std = list(std) if std is not None else [0.25] * shape[0]
    torch.manual_seed(seed)
    model = build(arch, num_classes, mean, std)
    meta = {
        "rs_onnx.arch": arch,
        "rs_onnx.mean": json.dumps(mean),
        "rs_onnx.std": json.dumps(std),
        "rs_onnx.dataset": "none (untrained, random weights)",
        "rs_onnx.train_command": "python -m export.export_onnx " + shlex.join(sys.argv[1:]),
    }
    # Random He-initialised ResNets give large logits: compare relative to their scale.
    return export_onnx(model, path, shape, meta, exporter=exporter, atol=1e-3)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: export an untrained model at real size."""
    from export.models import ARCHS

    p = argparse.ArgumentParser(prog="python -m export.export_onnx", description=export_untrained.__doc__)
    p.add_argument("--arch", choices=ARCHS, required=True)
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--num-classes", type=int, default=None, help="default: 1000 for resnet50, else 10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exporter", choices=("auto", "dynamo", "legacy"), default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("export").setLevel(logging.INFO)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    k = args.num_classes or (1000 if args.arch == "resnet50" else 10)
    try:
        report = export_untrained(args.arch, args.out, k, seed=args.seed, exporter=args.exporter)
    except ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out}: parity max |diff| {report.max_abs_diff:.3g}, argmax agreement {report.argmax_agreement:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
