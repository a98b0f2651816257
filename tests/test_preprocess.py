"""The preprocessing spec: layouts, per-channel affine, integer dtypes."""

import numpy as np
import pytest

from rs_onnx.errors import ConfigError, DataError
from rs_onnx.preprocess import Preprocessor, PreprocessSpec


def test_nhwc_is_detected_and_transposes_once():
    x = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    pre = Preprocessor(PreprocessSpec(), (3, 4, 5), (4, 5, 3), np.float32)
    assert pre.layout == "nhwc"
    np.testing.assert_array_equal(pre.clean(x), x.transpose(1, 2, 0))


def test_flat_models_take_row_major_pixels():
    x = np.arange(784, dtype=np.float32).reshape(1, 28, 28) / 784
    pre = Preprocessor(PreprocessSpec(), (1, 28, 28), (784, 1), np.float32)
    assert pre.layout == "flat"
    np.testing.assert_array_equal(pre.clean(x), x.reshape(784, 1))


def test_per_channel_mean_std_and_noise_scale():
    spec = PreprocessSpec(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    pre = Preprocessor(spec, (3, 2, 2), (3, 2, 2), np.float32)
    x = np.full((3, 2, 2), 0.6, dtype=np.float32)
    noise = np.ones((2, 3, 2, 2), dtype=np.float32)
    out = pre.noisy(pre.clean(x), noise, sigma=0.1)
    expected = (x + 0.1 - np.array([0.5, 0.4, 0.3])[:, None, None]) / np.array([0.2, 0.25, 0.5])[:, None, None]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[1], expected, rtol=1e-6)


def test_uint8_models_get_rounded_and_clipped_inputs():
    pre = Preprocessor(PreprocessSpec(scale=255.0), (1, 1, 3), (1, 1, 3), np.uint8)
    x = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)
    noise = np.array([[[[-1.0, 0.01, 1.0]]]], dtype=np.float32)
    out = pre.noisy(pre.clean(x), noise, sigma=0.1)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0, 0], [0, round((0.5 + 0.1 * 0.01) * 255), 255])


def test_size_mismatch_is_a_data_error():
    with pytest.raises(DataError, match="do not fit the model input"):
        Preprocessor(PreprocessSpec(), (1, 28, 28), (3, 32, 32), np.float32)


def test_channel_count_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="per-channel"):
        Preprocessor(PreprocessSpec(mean=(0.1, 0.2, 0.3), std=(1.0,)), (1, 28, 28), (1, 28, 28), np.float32)
    with pytest.raises(ConfigError, match="layout"):
        PreprocessSpec(layout="chw")


def test_flat_colour_models_need_a_declared_order():
    with pytest.raises(ConfigError, match="--layout flat"):
        Preprocessor(PreprocessSpec(), (3, 4, 4), (48,), np.float32)
    x = np.random.default_rng(1).random((3, 4, 4), dtype=np.float32)
    chw = Preprocessor(PreprocessSpec(layout="flat"), (3, 4, 4), (48,), np.float32)
    hwc = Preprocessor(PreprocessSpec(layout="nhwc"), (3, 4, 4), (48,), np.float32)
    np.testing.assert_array_equal(chw.clean(x), x.reshape(48))
    np.testing.assert_array_equal(hwc.clean(x), x.transpose(1, 2, 0).reshape(48))
