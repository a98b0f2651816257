"""The benchmarked networks: the same weights in ONNX and in torch, and their multiply-accumulates."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.models")

ARCHS = ("digits_cnn", "resnet20", "resnet110", "resnet50")
ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DIGITS = ROOT / "rs_onnx" / "data" / "digits_cnn.onnx"


def macs_per_sample(path: Path) -> int:
    """Multiply-accumulates of one sample through the Conv, Gemm and MatMul nodes of an ONNX file
    (shapes from ONNX shape inference at batch 1; nodes of unknown shape count 0)."""
    import onnx
    from onnx import shape_inference

    from rs_onnx import graph

    model = graph.strip_initializer_inputs(onnx.load(str(path)))
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)
    }
    dims.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        out, w = dims.get(node.output[0]), dims.get(node.input[1]) if len(node.input) > 1 else None
        if not out or not w or 0 in out or 0 in w:
            continue
        if node.op_type == "Conv":  # every output value: Cin/group x kernel MACs
            macs += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            macs += int(np.prod(out[1:])) * (
                w[-1] if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute) else w[0]
            )
    return macs


# --------------------------------------------------------------------------- models
def _num_classes(arch: str) -> int:
    return 1000 if arch == "resnet50" else 10


def _torch_from_onnx(arch: str, path: Path):
    """The torch module of ``arch`` with the weights of the ONNX file (names as torch.onnx exports them)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from export.models import build

    model_proto = onnx.load(str(path))
    meta = {p.key: p.value for p in model_proto.metadata_props}
    mean = json.loads(meta.get("rs_onnx.mean", "[0.5]"))
    std = json.loads(meta.get("rs_onnx.std", "[0.25]"))
    module = build(arch, _num_classes(arch), mean, std).eval()
    inits = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    state = module.state_dict()
    for key, value in state.items():
        if key.startswith("0."):  # Normalize buffers: rebuilt from the metadata
            continue
        if key not in inits or tuple(inits[key].shape) != tuple(value.shape):
            raise ValueError(f"{path.name}: no initializer {key} {tuple(value.shape)}")
        state[key] = torch.from_numpy(np.array(inits[key]))
    module.load_state_dict(state)
    return module


def prepare_model(arch: str, work_dir: Path, seed: int = 0, exporter: str = "auto"):
    """(onnx path, torch module, description): the same network in both."""
    import torch

    from export.export_onnx import ParityError, check_parity, export_onnx
    from export.models import INPUT_SHAPES, build

    shape = INPUT_SHAPES[arch]
    if arch == "digits_cnn" and BUNDLED_DIGITS.is_file():
        try:
            module = _torch_from_onnx(arch, BUNDLED_DIGITS)
            check_parity(module, BUNDLED_DIGITS, shape, batch_sizes=(1, 7))
            return BUNDLED_DIGITS, module, "bundled rs_onnx/data/digits_cnn.onnx (trained)"
        except (ValueError, ParityError, RuntimeError) as err:
            log.warning("bundled digits model not usable for the baseline (%s); exporting an untrained one", err)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{arch}_seed{seed}.onnx"
    side = path.with_suffix(".json")
    mean, std = [0.5] * shape[0], [0.25] * shape[0]
    torch.manual_seed(seed)
    module = build(arch, _num_classes(arch), mean, std).eval()
    facts = {"arch": arch, "seed": seed, "num_classes": _num_classes(arch), "torch": torch.__version__}
    if path.is_file() and side.is_file() and json.loads(side.read_text()) == facts:
        try:
            check_parity(module, path, shape, batch_sizes=(2,), atol=1e-3)
            return path, module, f"untrained (random weights, seed {seed}), exported from the torch module"
        except ParityError:
            log.info("%s: cached export differs from the torch module; exporting again", path)
    t = time.perf_counter()
    meta = {
        "rs_onnx.arch": arch,
        "rs_onnx.mean": json.dumps(mean),
        "rs_onnx.std": json.dumps(std),
        "rs_onnx.dataset": "none (untrained, random weights)",
    }
    export_onnx(module, path, shape, meta, exporter=exporter, atol=1e-3)
    side.write_text(json.dumps(facts))
    log.info("exported %s in %.1f s", path, time.perf_counter() - t)
    return path, module, f"untrained (random weights, seed {seed}), exported from the torch module"
