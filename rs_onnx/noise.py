"""Smoothing noise (Gaussian, uniform, Laplace) in reproducible blocks.

The noise for sample j of (example, phase) is row ``j % block_size`` of block ``j // block_size``,
drawn from its own stream ``SeedSequence(entropy, spawn_key=(example, phase, block))``. Results
therefore do not depend on the batch size, the number of noise threads, the order in which blocks
are drawn, or how a data set is split between runs.

The bit generator is SFC64. Float32 standard normals for one CIFAR image (3072 values), CPU time per
image, median of 20 blocks of 341 images, on the project's 2-core AMD EPYC: SFC64 21.0 us, PCG64 23.2,
PCG64DXSM 23.9, Philox 27.0 with the machine loaded; SFC64 21.7, PCG64 21.7, PCG64DXSM 22.7, Philox
25.8 idle. PCG64 is never faster, and changing the generator would change every result for a given
seed, so SFC64 stays (it is part of the reproducibility contract). The normal transform (NumPy's
ziggurat, ~7 ns a value there) dominates, not the bit generator.

A block may be drawn in pieces (``generator`` then ``fill`` into consecutive slices): NumPy's
``standard_normal`` consumes the stream element by element, so the pieces are bit-identical to one
:func:`draw` of the whole block. The sampler uses this to draw straight into its batch buffers.

Noise kinds. :data:`KINDS` maps a name to a :class:`NoiseKind` whose ``fill(rng, out)`` writes the next
rows of the block's stream, at unit scale, into ``out``; the sampler adds ``sigma * out`` to the clean
input. Unit scale means: ``gaussian`` standard normal (sigma is the standard deviation), ``uniform``
U(-1, 1) (sigma is the half-width lambda), ``laplace`` density exp(-|z|) / 2 (sigma is the scale
lambda), the conventions of ``export/objectives.py`` and :func:`rs_onnx.bounds.radius`. Every kind uses
the same per-block streams (same seeding contract), and each ``fill`` consumes its stream value by
value, so a block drawn in pieces equals the block drawn at once. Another kind plugs in with
:func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# Phases: independent noise for Cohen's selection (n0), estimation (n) and PREDICT samples.
SELECT, ESTIMATE, PREDICT = 0, 1, 2

# A block holds about this many float32 values (4 MiB), capped at MAX_BLOCK samples.
BLOCK_VALUES = 1 << 20
MAX_BLOCK = 1000


def block_size_for(dim: int) -> int:
    """Samples per noise block for inputs of ``dim`` values: depends on the data only, never on the batch."""
    return int(max(1, min(MAX_BLOCK, BLOCK_VALUES // max(1, dim))))


def new_entropy() -> int:
    """Fresh OS entropy (a 128-bit int) for a run without --seed; record it to repeat the run."""
    entropy = np.random.SeedSequence().entropy
    assert isinstance(entropy, int)  # fresh OS entropy is always one int
    return entropy


@dataclass(frozen=True)
class Block:
    """``size`` noise rows of block ``block`` of (example, phase); ``slot`` says whose counts they feed."""

    slot: int
    example: int
    phase: int
    block: int
    size: int


BIT_GENERATOR = np.random.SFC64


def generator(entropy: int, block: Block) -> np.random.Generator:
    """The block's own stream: ``SeedSequence(entropy, spawn_key=(example, phase, block))`` into SFC64."""
    seq = np.random.SeedSequence(entropy, spawn_key=(block.example, block.phase, block.block))
    return np.random.Generator(BIT_GENERATOR(seq))


def fill(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """The next ``len(out)`` rows of a block's stream written into ``out`` (float32, C-contiguous), no allocation."""
    return rng.standard_normal(dtype=np.float32, out=out)


def draw(entropy: int, block: Block, shape: tuple[int, ...], kind: str = "gaussian") -> np.ndarray:
    """Unit-scale noise of ``kind`` (default standard normal), float32 [block.size, *shape], from the block's stream."""
    if kind == "gaussian":
        return generator(entropy, block).standard_normal((block.size, *shape), dtype=np.float32)
    out = np.empty((block.size, *shape), dtype=np.float32)
    return get_kind(kind).fill(generator(entropy, block), out)


# ------------------------------------------------------------------------------------------ noise kinds

_HALF_ULP = np.float32(2.0**-24)


def fill_uniform(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """U(-1, 1) in place, float32: u = k 2^-24 (k uniform in 0..2^24-1) becomes 2u - 1 + 2^-24.

    The 2^24 values are the odd multiples of 2^-24 in (-1, 1), exactly symmetric about 0 (all
    operations are exact in float32), so the smoothed classifier's noise is symmetric as the uniform
    certificates assume.
    """
    rng.random(dtype=np.float32, out=out)
    out *= np.float32(2.0)
    out -= np.float32(1.0)
    out += _HALF_ULP
    return out


def fill_laplace(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """Laplace(0, 1) in place, float32, by inversion: z = sign(u) (-log(1 - |u|)), u from :func:`fill_uniform`.

    P(|z| > t) = P(1 - |u| < e^-t) = e^-t, and z is symmetric because u is. The largest |z| is
    24 log 2 = 16.6 (probability 6e-8 of reaching it). The log is NumPy's float32 log1p (its last bit
    may differ between CPUs with different SIMD paths).
    """
    fill_uniform(rng, out)
    negative = np.signbit(out)
    np.abs(out, out=out)
    np.negative(out, out=out)
    np.log1p(out, out=out)
    np.negative(out, out=out, where=~negative)
    return out


@dataclass(frozen=True)
class NoiseKind:
    """A smoothing noise: ``fill(rng, out)`` writes unit-scale float32 noise into ``out`` and returns it.

    ``scale`` says what sigma means for this kind; ``norm`` is the norm of its native certificate.
    """

    name: str
    fill: Callable[[np.random.Generator, np.ndarray], np.ndarray]
    scale: str
    norm: str


KINDS: dict[str, NoiseKind] = {}


def register(kind: NoiseKind) -> NoiseKind:
    """Add a noise kind to :data:`KINDS` (names are unique)."""
    if kind.name in KINDS:
        raise ValueError(f"noise kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> NoiseKind:
    """The registered noise kind ``name``; ConfigError naming the choices otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        from .errors import ConfigError

        raise ConfigError(f"noise={name!r}: expected one of {', '.join(KINDS)}") from None


register(NoiseKind("gaussian", fill, "standard deviation", "l2"))
register(NoiseKind("uniform", fill_uniform, "half-width lambda of U[-lambda, lambda] per value", "l1"))
register(NoiseKind("laplace", fill_laplace, "scale lambda (density exp(-|z|/lambda) / (2 lambda))", "l1"))


def split(slot: int, example: int, phase: int, n: int, block_size: int, first: int = 0) -> list[Block]:
    """The blocks that make up n samples of (example, phase), numbered from block ``first`` on: samples
    ``first * block_size`` to ``first * block_size + n - 1`` of the (example, phase) stream. Pieces that start
    at whole blocks add up: the blocks of n = a + b samples are those of a from 0 and of b from a // block_size
    (when a is a multiple of block_size)."""
    return list(iter_split(slot, example, phase, n, block_size, first))


def iter_split(slot: int, example: int, phase: int, n: int, block_size: int, first: int = 0) -> Iterator[Block]:
    """The blocks of :func:`split`, one at a time (memory independent of n)."""
    full, rest = divmod(n, block_size)
    for b in range(first, first + full):
        yield Block(slot, example, phase, b, block_size)
    if rest:
        yield Block(slot, example, phase, first + full, rest)
