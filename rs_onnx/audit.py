"""Audit mode: certificates that stay true when the model itself is adversarial.

Randomized smoothing's theorem assumes the model sees the real number x + delta. In float32 it sees
fl(x + delta), whose low-order bits depend on x, and a model can read them (Voracek & Hein, ICLR 2023).
Audit mode closes that and two other channels a model supplier controls:

* **Grid noise, drawn exactly.** Inputs live on the 8-bit grid {0, 1/255, ..., 1}^d. Each coordinate
  gets an integer i with P(i) = Phi((i + 1/2) / (255 sigma)) - Phi((i - 1/2) / (255 sigma)), i.e.
  i = round(255 delta) for delta ~ N(0, sigma^2), tails lumped at +-M, M = 255 (k + 1),
  k = max(1, floor(6 sigma)). It is sampled from raw 64-bit words u against the integer thresholds
  T_j = ceil(2^64 Phi((j + 1/2) / (255 sigma))) (computed with :mod:`decimal` at 110 digits, sigma taken
  as the shortest decimal string of the float given): i = -M + #{j : u >= T_j}. The word u stands for
  the real uniform U in [u, u + 1) 2^-64; only when u = T_j - 1 (the cell holding the real threshold,
  probability 2M 2^-64 per coordinate) can U's exact answer differ, and then 64 more bits are drawn and
  compared with T128_j = ceil(2^128 Phi(...)). A draw that still lands on a 2^-128 boundary cell stops
  the run with :class:`AuditError` (never a certificate). So every sampled i is exactly the Gaussian
  rounded to the grid: no tau is subtracted from pA_lower.
* **Added in integers.** s = clip(x_u8 + i, 255 - M, M) (int32), which equals
  clip(round(255 (x + delta)), 255 - M, M): a function of the real point x + delta alone. Only then is
  s turned into the model input, by a table lookup per (channel, x_u8 + i) whose entries depend on
  s only: scale, mean/std, layout and dtype
  are a deterministic function of s. x and the noise never meet in floating point, so Cohen et al.'s
  radius sigma Phi^-1(pA_lower) holds for every 8-bit image within that l2 distance.
* **Rows cannot see each other.** :func:`scan_batch_independence` proves from the graph that every
  output row depends on its input row only; otherwise the sampler feeds one sample per call.
* **The seed is drawn after the model is fixed** (see :mod:`rs_onnx.run`).
"""

from __future__ import annotations

import copy
import decimal
import functools
import itertools
import logging
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import numpy as np

from . import noise
from .errors import ConfigError, DataError, RsOnnxError
from .preprocess import Preprocessor, PreprocessSpec
from .sampling import Sampler

logger = logging.getLogger(__name__)

DIGITS = 110
"""Decimal digits of the threshold computation (>= 100)."""
GRID_TOLERANCE = 1e-4
"""A float pixel x is on the grid when |255 x - round(255 x)| <= this (float32 k/255 is within 2e-5)."""
CHUNK_VALUES = 1 << 14
"""The sampler draws and converts a block in pieces of about this many values (the stream is the same)."""
EXTRA_KEY = 1 << 30
"""Fifth spawn-key entry of the stream that supplies the extra 64 bits of boundary cells."""


class AuditError(RsOnnxError):
    """Audit mode cannot certify soundly (a 2^-128 boundary draw, device noise, an off-grid input...)."""


# --------------------------------------------------------------------------- exact thresholds
@functools.lru_cache(maxsize=4)
def _sqrt_2pi(prec: int) -> Decimal:
    """sqrt(2 pi) to prec digits (pi by the series of the decimal module's documentation)."""
    with decimal.localcontext(decimal.Context(prec=prec + 5)):
        three = Decimal(3)
        lasts, t, s, n, na, d, da = Decimal(0), three, three, 1, 0, 0, 24
        while s != lasts:
            lasts = s
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            t = (t * n) / d
            s += t
        root = (2 * s).sqrt()
    with decimal.localcontext(decimal.Context(prec=prec)):
        return +root


def phi_decimal(x: Decimal, digits: int = DIGITS) -> Decimal:
    """Standard normal CDF Phi(x), absolute error about 10^-digits (series 1/2 + phi(x) sum x^(2n+1)/(2n+1)!!)."""
    a = abs(x)
    if a > 40:  # Phi(-40) < 1e-349: below any threshold cell of 2^-128
        tiny = Decimal(10) ** -(digits + 240)
        return 1 - tiny if x > 0 else tiny
    ctx = decimal.Context(prec=digits + 20)
    with decimal.localcontext(ctx):
        a2 = a * a
        term, total, n = a, a, 0
        eps = Decimal(10) ** -(digits + 15)
        while True:
            n += 1
            term = term * a2 / (2 * n + 1)
            total += term
            if term < eps * total or term == 0:
                break
        density = (-a2 / 2).exp() / _sqrt_2pi(ctx.prec)
        half = density * total
        return Decimal("0.5") + half if x >= 0 else Decimal("0.5") - half


def grid_extent(sigma: float) -> tuple[int, int]:
    """(k, M): k = max(1, floor(6 sigma)), M = 255 (k + 1), the lumped tails of the grid noise (grid units)."""
    s = Decimal(repr(float(sigma)))
    k = max(1, int((6 * s).to_integral_value(rounding=ROUND_FLOOR)))
    return k, 255 * (k + 1)


@functools.lru_cache(maxsize=8)
def _phis(sigma: float, digits: int) -> tuple[Decimal, ...]:
    """Phi((j + 1/2) / (255 sigma)) for j = -M .. M - 1, to about 10^-digits."""
    s = Decimal(repr(float(sigma)))
    if not s > 0:
        raise ConfigError(f"sigma={sigma}: expected a positive noise level")
    _, m = grid_extent(sigma)
    with decimal.localcontext(decimal.Context(prec=digits + 20)):
        return tuple(phi_decimal((Decimal(2 * j + 1) / 2) / (255 * s), digits) for j in range(-m, m))


def thresholds(sigma: float, digits: int = DIGITS, bits: int = 64) -> tuple[int, ...]:
    """T_j = ceil(2^bits Phi((j + 1/2) / (255 sigma))) for j = -M .. M - 1 (python ints, 2M of them).

    sigma is read as the shortest decimal string of the float (0.12 is 0.12, not its binary neighbour).
    """
    with decimal.localcontext(decimal.Context(prec=digits + 60)):
        scale = Decimal(2) ** bits
        return tuple(int((scale * p).to_integral_value(rounding=ROUND_CEILING)) for p in _phis(float(sigma), digits))


class GridNoise:
    """The exact sampler of the Gaussian rounded to the 8-bit grid, for one sigma ([0,1] pixel units)."""

    def __init__(self, sigma: float) -> None:
        self.sigma = float(sigma)
        self.sigma_text = repr(self.sigma)
        self.k, self.M = grid_extent(self.sigma)
        t64 = thresholds(self.sigma, DIGITS, 64)
        self.t128 = thresholds(self.sigma, DIGITS, 128)
        # T_j - 1 fits uint64 (1 <= T_j <= 2^64); i = -M + #{j : T_j - 1 < u}.
        self.tm1 = np.array([t - 1 for t in t64], dtype=np.uint64)
        # Buckets of the top 16 bits: the count where no T_j - 1 lies in the bucket (closed), else -1.
        edges = np.arange(1 << 16, dtype=np.uint64) << np.uint64(48)
        lo = np.searchsorted(self.tm1, edges, side="left")
        hi = np.searchsorted(self.tm1, edges | np.uint64((1 << 48) - 1), side="right")
        self._bucket = np.where(lo == hi, lo, -1).astype(np.int32)
        self.boundary_draws = 0

    def probabilities(self) -> np.ndarray:
        """P(i = j) for j = -M .. M of the 64-bit sampler, float64 [2M + 1] (exactly (T_j - T_{j-1}) / 2^64)."""
        t = [0] + [int(v) + 1 for v in self.tm1] + [1 << 64]
        return np.array([(b - a) / 2.0**64 for a, b in itertools.pairwise(t)])

    def shifted(self, u: np.ndarray, extra_bits) -> np.ndarray:
        """i + M = #{j : T_j - 1 < u} (int32, shape of u) for raw words u (uint64, C-contiguous), exact.

        One lookup of the word's top 16 bits; words in the ~1% of buckets that hold a threshold take a
        binary search, and those on a threshold's own cell (u = T_j - 1) 64 more bits from ``extra_bits(m)``.
        """
        u = np.ascontiguousarray(u, dtype=np.uint64)
        top = u.view(np.uint16)[..., 3::4] if np.little_endian else (u >> np.uint64(48)).astype(np.intp)
        c = np.take(self._bucket, top)
        flat_c = c.reshape(-1)
        amb = np.flatnonzero(flat_c < 0)
        if amb.size:
            flat_u = u.reshape(-1)
            words = flat_u[amb]
            counts = np.searchsorted(self.tm1, words, side="left")
            flat_c[amb] = counts
            on = np.flatnonzero(words == self.tm1[np.minimum(counts, self.tm1.size - 1)])
            on = on[counts[on] < self.tm1.size]
            if on.size:
                self._resolve(flat_u, flat_c, amb[on], extra_bits)
        return c

    def sample(self, u: np.ndarray, extra_bits) -> np.ndarray:
        """Grid noise i (int32, shape of u) for raw words u (uint64).

        extra_bits(m) returns m more uint64 words, used only for words in a boundary cell (u = T_j - 1).
        """
        c = self.shifted(u, extra_bits)
        c -= self.M
        return c

    def _resolve(self, u, c, hit, extra_bits) -> None:
        """Exact answer for words in a boundary cell: the next 64 bits against the 2^128 thresholds."""
        more = np.asarray(extra_bits(hit.size), dtype=np.uint64)
        self.boundary_draws += int(hit.size)
        for h, w2 in zip(hit.tolist(), more.tolist()):
            w = int(u[h])
            v = (w << 64) | int(w2)
            j = int(c[h])
            while j < 2 * self.M and int(self.tm1[j]) == w:
                t = self.t128[j]
                if v == t - 1:
                    raise AuditError(
                        "a grid-noise draw landed on a 2^-128 boundary cell (probability about "
                        "1e-35 per value); nothing was certified: expected to rerun with fresh entropy"
                    )
                if v < t:
                    break
                j += 1
            c[h] = j


# --------------------------------------------------------------------------- inputs on the grid
def to_grid(x: np.ndarray) -> np.ndarray:
    """x in [0,1] on the 8-bit grid -> int32 x_u8 (same shape); raises DataError off the grid."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.int32)
    if x.dtype.kind not in "fiu":
        raise DataError(f"audit: input of dtype {x.dtype}; expected uint8 or floats k/255")
    v = x.astype(np.float64) * 255.0
    k = np.rint(v)
    bad = ~np.isfinite(v) | (np.abs(v - k) > GRID_TOLERANCE) | (k < 0) | (k > 255)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise DataError(
            f"audit: input value {float(x.reshape(-1)[i])!r} at flat index {i} ({int(bad.sum())} such "
            "values) is not on the 8-bit grid; expected uint8 data or floats k/255 with k in 0..255 "
            "(audit mode certifies 8-bit images only; resized float images are refused)"
        )
    return k.astype(np.int32)


class AuditPreprocessor(Preprocessor):
    """Like :class:`Preprocessor`, but clean images are int32 grid values x_u8 in the model layout, and model
    inputs are a lookup of s = clip(x_u8 + i, 255 - M, M) per (element's channel, s)."""

    def __init__(self, spec: PreprocessSpec, image_shape, model_shape, model_dtype, grid: GridNoise) -> None:
        super().__init__(spec, image_shape, model_shape, model_dtype)
        self.grid = grid
        lo, hi = 255 - grid.M, grid.M
        self.s_min, self.s_max = lo, hi
        self.width = width = 2 * grid.M + 256  # t = x_u8 + i in [-M, 255 + M]; the table clips t to [lo, hi]
        s = np.clip(np.arange(-grid.M, 256 + grid.M, dtype=np.float64), lo, hi)
        mean = np.asarray(self.spec.mean, np.float64)
        std = np.asarray(self.spec.std, np.float64)
        channels = max(mean.size, std.size)
        mean, std = mean * np.ones(channels), std * np.ones(channels)
        table = (s[None, :] * (self.spec.scale / 255.0) - mean[:, None]) / std[:, None]  # [C, width], float64
        self.table = (
            self.cast(table.astype(np.float32).reshape(-1))
            if self.dtype.kind != "f"
            else table.astype(self.dtype).reshape(-1)
        )
        chan = np.zeros(self.model_shape, np.int32)
        if channels > 1:
            axis = self._channel_axis()
            assert axis is not None  # Preprocessor checked the per-channel values against the layout
            shape = [1] * len(self.model_shape)
            shape[axis] = channels
            chan = chan + (np.arange(channels, dtype=np.int32) * width).reshape(shape)
        self.channel_base = np.ascontiguousarray(chan, dtype=np.int32)  # + x_u8 + (i + M) -> table index

    def clean(self, x: np.ndarray) -> np.ndarray:
        """x_u8 laid out as the model input: int32 [*model_shape] (raises DataError off the grid)."""
        x = np.asarray(x)
        grid = self.in_channel_order(to_grid(x.reshape(self.image_shape)))
        if self.layout == "nhwc" and grid.ndim == 3:
            grid = np.moveaxis(grid, 0, -1)
        return np.ascontiguousarray(grid.reshape(self.model_shape), dtype=np.int32)

    def base(self, clean: np.ndarray) -> np.ndarray:
        """Per-element table offsets of one clean image (int32 [*model_shape]): index = base + i + M."""
        return clean + self.channel_base

    def lookup(self, shifted: np.ndarray, base: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Model inputs from i + M (int32 [m, *model_shape], overwritten) and :meth:`base`: one table lookup of
        t = x_u8 + i, whose entry is the preprocessing of s = clip(t, 255 - M, M) (a function of s only)."""
        shifted += base
        # every index is in range by construction (i + M in [0, 2M], x_u8 in [0, 255]); "clip" only avoids
        # the buffered out= path of mode "raise"
        return np.take(self.table, shifted, out=out, mode="clip")

    def from_grid(self, clean: np.ndarray, i: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Model inputs for s = clip(clean + i, 255 - M, M): clean int32 [*model_shape] (x_u8), grid noise
        i int32 [m, *model_shape] in [-M, M] (overwritten). Integers only until the table lookup."""
        i += self.grid.M
        return self.lookup(i, self.base(clean), out)

    def noisy(self, clean, noise, sigma):  # pragma: no cover - the float path must never run in audit mode
        raise AuditError("audit mode: float noise reached the preprocessor; expected grid noise only")

    def describe(self) -> dict:
        return {
            **super().describe(),
            "audit_input": f"table of (channel, s) for s = x_u8 + i in [{self.s_min}, {self.s_max}] (x_u8 + i clipped)",
        }


# --------------------------------------------------------------------------- the sampler
class AuditSampler(Sampler):
    """:class:`Sampler` whose blocks are exact grid noise added in integers (same per-block streams)."""

    def __init__(
        self,
        classifier,
        preprocessor: AuditPreprocessor,
        sigma: float,
        entropy: int,
        batch_size: int | None = None,
        noise_threads: int | None = None,
        *,
        pad: bool | None = None,
        num_classes: int | None = None,
    ) -> None:
        if getattr(classifier, "device_noise", False):
            raise ConfigError(
                "--audit with --device-noise: on-device Gaussian noise is float noise the model's "
                "arithmetic can read; expected host grid noise (drop --device-noise)"
            )
        super().__init__(
            classifier, preprocessor, sigma, entropy, batch_size, noise_threads, pad=pad, num_classes=num_classes
        )
        self.grid = preprocessor.grid
        self.device_noise = False

    def _fill(self, plan, tasks, ring, batch, slots) -> None:
        rng = noise.generator(self.entropy, plan.block)
        bits = rng.bit_generator
        extra = {}

        def extra_bits(m: int) -> np.ndarray:
            if "g" not in extra:
                b = plan.block
                seq = np.random.SeedSequence(self.entropy, spawn_key=(b.example, b.phase, b.block, EXTRA_KEY))
                extra["g"] = noise.BIT_GENERATOR(seq)
            return extra["g"].random_raw(m)

        pre: AuditPreprocessor = self.pre  # type: ignore[assignment]
        base = pre.base(tasks[plan.task].clean)
        shape = pre.model_shape
        dim = int(np.prod(shape))
        step = max(1, CHUNK_VALUES // dim)
        g, end = plan.start, plan.start + plan.block.size
        while g < end:
            j = g // batch
            take = min(end, (j + 1) * batch) - g
            lo = (j % slots) * batch + (g - j * batch)
            # pieces of ~16K values (128 KiB of words) stay in cache: 2-3x faster than whole blocks
            for a in range(0, take, step):
                m = min(step, take - a)
                u = bits.random_raw(m * dim).reshape(m, *shape)
                pre.lookup(self.grid.shifted(u, extra_bits), base, out=ring[lo + a : lo + a + m])
            g += take


# --------------------------------------------------------------------------- batch independence
_ELEMENTWISE = {
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "BitShift",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Cosh",
    "Div",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "IsInf",
    "IsNaN",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "Max",
    "Mean",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "PRelu",
    "Reciprocal",
    "Relu",
    "Round",
    "Selu",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Where",
    "Xor",
}
_PER_SAMPLE = {
    "Conv",
    "ConvTranspose",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "GlobalLpPool",
    "LRN",
    "InstanceNormalization",
    "BatchNormalization",
    "SpaceToDepth",
    "DepthToSpace",
}
_REDUCE = {
    "ReduceMax",
    "ReduceMin",
    "ReduceMean",
    "ReduceSum",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def scan_batch_independence(model) -> tuple[bool, str]:
    """(True, reason) when every output row of ``model`` provably depends only on the same input row.

    Axis 0 of every real input is the batch. A node is row-separable when it is elementwise (with
    constants that do not broadcast along the batch), per-sample (Conv, pooling, BatchNormalization in
    inference, ...), a Gemm/MatMul by constant weights, or a Reshape/Flatten/Transpose/Softmax/Reduce/
    Concat/Slice/Gather/Squeeze/Unsqueeze/Pad that keeps axis 0 apart. Anything else that touches
    batch-carrying values (reductions or softmax over axis 0, Shape, dynamic quantisation, control flow,
    random ops, custom domains, unknown operators) makes the answer (False, why).
    """
    import onnx
    from onnx import numpy_helper

    from . import graph as g

    # Ranks come from ONNX shape inference on the declared inputs only: the model's own value_info and
    # output shapes are claims of the (possibly adversarial) supplier, so they are dropped first.
    model = copy.deepcopy(model)
    del model.graph.value_info[:]
    for v in model.graph.output:
        if v.type.HasField("tensor_type"):
            v.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown ranks then count as unsafe
        inferred = model
    gr = inferred.graph
    rank: dict[str, int] = {}
    shape: dict[str, list] = {}
    for v in list(gr.input) + list(gr.value_info) + list(gr.output):
        d = g.dims(v)
        if d is not None:
            rank[v.name], shape[v.name] = len(d), d
    consts: dict[str, np.ndarray] = {}
    for t in gr.initializer:
        try:
            consts[t.name] = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - external data: known constant, unknown value
            consts[t.name] = None  # type: ignore[assignment]
        rank.setdefault(t.name, len(t.dims))
        shape.setdefault(t.name, list(t.dims))
    opset = g.opset_version(inferred) or 1
    batch = {v.name for v in g.real_inputs(inferred)}

    def const_value(name):
        return consts.get(name)

    def axes_of(node, index=1):
        if len(node.input) > index and node.input[index]:
            v = const_value(node.input[index])
            return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
        a = _attr(node, "axes")
        return None if a is None else [int(v) for v in a]

    def norm(axis, r):
        return axis + r if axis < 0 else axis

    axes: list[int] | None
    for node in gr.node:
        ins = [i for i in node.input if i]
        carried = [i for i in ins if i in batch]
        where = f"node {node.name or node.op_type!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            return False, f"{where} is in domain {node.domain!r}: unknown operators count as unsafe"
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return False, f"{where} has a subgraph (control flow can read any outer value)"
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name == "value_ints":
                    consts[node.output[0]] = np.array(attr.ints, np.int64)
            continue
        if not carried:
            if node.op_type.startswith("Random") or node.op_type in ("Multinomial", "Bernoulli", "If", "Loop", "Scan"):
                return False, f"{where}: random or control-flow operator"
            continue  # a function of constants only
        op = node.op_type
        r_out = rank.get(node.output[0]) if node.output else None
        r_in = rank.get(node.input[0])
        ok, why = False, "not a known row-separable operator"
        if op in _ELEMENTWISE or (op == "Dropout" and len(ins) == 1):
            known = [rank[i] for i in ins if i in rank]
            r_out = max(known) if len(known) == len(ins) else None  # numpy broadcasting: the largest input rank
            ok = r_out is not None and all(rank.get(i) == r_out for i in carried)
            for i in ins:
                if i in carried:
                    continue
                r = rank.get(i)
                d = shape.get(i)
                if r is None or r_out is None or r > r_out or (r == r_out and (not d or d[0] != 1)):
                    ok = False
            why = "broadcasts a constant along the batch axis, or ranks unknown"
        elif op in _PER_SAMPLE:
            ok = carried == [node.input[0]] and not _attr(node, "training_mode", 0)
            why = "a weight or statistic comes from the batch"
        elif op == "Gemm":
            c = shape.get(node.input[2]) if len(ins) > 2 else None
            ok = carried == [node.input[0]] and not _attr(node, "transA", 0) and (c is None or len(c) < 2 or c[0] == 1)
            why = "transA or batch-dependent B/C"
        elif op == "MatMul":
            a, b = node.input[0], node.input[1]
            ra, rb = rank.get(a), rank.get(b)
            if a in batch and b in batch:
                ok = ra is not None and ra == rb and ra >= 3
            elif a in batch:
                ok = ra is not None and rb is not None and ra >= 2 and (rb <= 2 or rb < ra or shape[b][0] == 1)
            why = "the batch axis is contracted or moved"
        elif op == "Flatten":
            ok = r_in is not None and norm(int(_attr(node, "axis", 1)), r_in) >= 1
            why = "axis 0"
        elif op == "Reshape":
            target = const_value(node.input[1])
            src = shape.get(node.input[0])
            t = [] if target is None else [int(v) for v in np.asarray(target).reshape(-1)]
            if src is not None and t and not (_attr(node, "allowzero", 0) and 0 in t):
                if t[0] == 0:
                    ok = True
                elif t[0] == -1 and -1 not in t[1:] and all(isinstance(d, int) for d in src[1:]):
                    rest = [src[k] if v == 0 and k < len(src) else v for k, v in enumerate(t)][1:]
                    ok = all(isinstance(v, int) and v > 0 for v in rest) and math.prod(rest) == math.prod(src[1:])
            why = "target shape not constant or not row-preserving"
        elif op == "Transpose":
            perm = _attr(node, "perm")
            ok = perm is not None and int(perm[0]) == 0
            why = "perm moves axis 0"
        elif op in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization"):
            default = -1 if (op == "LayerNormalization" or opset >= 13) else 1
            ok = r_in is not None and norm(int(_attr(node, "axis", default)), r_in) >= 1 and carried == [node.input[0]]
            why = "normalises over axis 0"
        elif op in _REDUCE or op in ("ArgMax", "ArgMin"):
            if op in ("ArgMax", "ArgMin"):
                axes = [int(_attr(node, "axis", 0))]
            else:
                axes = (
                    axes_of(node)
                    if (op == "ReduceSum" and opset >= 13) or opset >= 18
                    else (None if _attr(node, "axes") is None else [int(v) for v in _attr(node, "axes")])
                )
            ok = axes is not None and len(axes) > 0 and r_in is not None and 0 not in [norm(a, r_in) for a in axes]
            why = "reduces over axis 0 (or over all axes)"
        elif op == "Concat":
            ok = r_in is not None and norm(int(_attr(node, "axis", 0)), r_in) != 0 and len(carried) == len(ins)
            why = "concatenates along axis 0, or with a constant"
        elif op == "Split":
            ok = r_in is not None and norm(int(_attr(node, "axis", 0)), r_in) != 0 and carried == [node.input[0]]
            why = "splits axis 0"
        elif op in ("Squeeze", "Unsqueeze"):
            axes = axes_of(node) if opset >= 13 else _attr(node, "axes")
            r = r_out if op == "Unsqueeze" else r_in
            ok = (
                axes is not None
                and r is not None
                and 0 not in [norm(int(a), r) for a in axes]
                and carried == [node.input[0]]
            )
            why = "touches axis 0 (or axes unknown)"
        elif op == "Slice":
            if opset >= 10:
                axes = axes_of(node, 3) if len(node.input) > 3 else None
                consts_ok = all(i in consts for i in ins[1:])
            else:
                axes, consts_ok = _attr(node, "axes"), True
            ok = (
                consts_ok
                and axes is not None
                and r_in is not None
                and 0 not in [norm(int(a), r_in) for a in axes]
                and carried == [node.input[0]]
            )
            why = "slices axis 0 (or axes unknown)"
        elif op == "Gather":
            ok = r_in is not None and norm(int(_attr(node, "axis", 0)), r_in) != 0 and carried == [node.input[0]]
            why = "gathers along axis 0, or indices from the batch"
        elif op == "Pad":
            pads = const_value(node.input[1]) if opset >= 11 and len(node.input) > 1 else _attr(node, "pads")
            pads = None if pads is None else [int(v) for v in np.asarray(pads).reshape(-1)]
            ok = (
                pads is not None
                and r_in is not None
                and pads[0] == 0
                and pads[r_in] == 0
                and carried == [node.input[0]]
                and len(node.input) <= 3
            )
            why = "pads axis 0"
        if not ok:
            return False, f"{where}: {why}"
        batch.update(o for o in node.output if o)
    return True, "every operator is row-separable along the batch axis (static scan)"


def classifier_batch_independence(classifier) -> dict:
    """How the sampler may batch ``classifier`` in audit mode: {"batched": bool, "how": str}.

    An :class:`~rs_onnx.classifier.OnnxClassifier` whose own batch mode is per-sample is independent by
    construction; otherwise its graph (as run: batch-1 models after the batch rewrite) is scanned. Other
    classifiers are batched only when they set ``batch_independent = True`` (the caller's declaration).
    """
    mode = getattr(classifier, "batch_mode", None)
    if mode == "per-sample":
        return {"batched": True, "how": "the model already runs one sample per call (batch mode per-sample)"}
    path = getattr(classifier, "path", None)
    if mode is not None and path is not None:
        import hashlib

        import onnx

        from . import graph as g

        with open(path, "rb") as f:  # the bytes scanned are the bytes whose sha256 meta.json records
            data = f.read()
        if hashlib.sha256(data).hexdigest() != getattr(classifier, "sha256", None):
            return {"batched": False, "how": f"one sample per model call: {path} changed since it was loaded"}
        try:
            model = g.strip_initializer_inputs(onnx.load_model_from_string(data))
        except Exception as err:  # noqa: BLE001 - a graph the scan cannot read is unsafe
            return {
                "batched": False,
                "how": f"one sample per model call: the scan cannot read the graph ({g.one_line(err)})",
            }
        if mode == "rewritten":
            others = [n for n in getattr(classifier, "_extra", {}) or {}]
            model, _ = g.make_batch_dynamic(model, classifier.input_name, other_inputs=others)
        try:
            ok, why = scan_batch_independence(model)
        except Exception as err:  # noqa: BLE001 - a graph the scan cannot read is unsafe
            ok, why = False, f"the scan failed ({g.one_line(err)})"
        if ok:
            return {"batched": True, "how": why}
        return {"batched": False, "how": f"one sample per model call: {why}"}
    if getattr(classifier, "batch_independent", False) is True:
        return {"batched": True, "how": "declared by the Python classifier (batch_independent = True)"}
    return {"batched": False, "how": "one sample per model call: not an ONNX graph the scan can read"}
