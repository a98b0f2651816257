"""Noise blocks are reproducible per (seed, example, phase, block) and independent of everything else."""

import numpy as np

from rs_onnx import noise


def test_block_size_depends_on_dimension_only():
    assert noise.block_size_for(784) == 1000
    assert noise.block_size_for(3 * 224 * 224) == (1 << 20) // (3 * 224 * 224)
    assert noise.block_size_for(10**9) == 1


def test_split_covers_n_exactly():
    blocks = noise.split(slot=3, example=7, phase=1, n=2500, block_size=1000)
    assert [b.size for b in blocks] == [1000, 1000, 500]
    assert [b.block for b in blocks] == [0, 1, 2]
    assert all(b.slot == 3 and b.example == 7 and b.phase == 1 for b in blocks)


def test_draw_is_reproducible_and_streams_differ():
    b = noise.Block(0, example=5, phase=1, block=2, size=4)
    a1 = noise.draw(123, b, (3,))
    a2 = noise.draw(123, noise.Block(9, 5, 1, 2, 4), (3,))  # slot does not matter
    np.testing.assert_array_equal(a1, a2)
    assert a1.dtype == np.float32 and a1.shape == (4, 3)
    for other in (noise.Block(0, 6, 1, 2, 4), noise.Block(0, 5, 0, 2, 4), noise.Block(0, 5, 1, 3, 4)):
        assert not np.array_equal(a1, noise.draw(123, other, (3,)))
    assert not np.array_equal(a1, noise.draw(124, b, (3,)))


def test_draw_is_standard_normal():
    z = noise.draw(0, noise.Block(0, 0, 0, 0, 1000), (100,)).ravel()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
