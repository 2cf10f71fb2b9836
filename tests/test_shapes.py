"""Shape helpers and parameter counts, pinned on worked examples."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv


def test_worked_example_3x32x32_ten_5x5_filters():
    assert gpuconv.conv2d_output_shape((3, 32, 32), (10, 3, 5, 5), stride=1, padding=2) == (10, 32, 32)
    assert gpuconv.conv2d_output_shape((8, 3, 32, 32), (10, 3, 5, 5), padding=2) == (8, 10, 32, 32)
    assert gpuconv.conv2d_num_params(3, 10, 5) == (5 * 5 * 3 + 1) * 10 == 760


def test_lenet5_parameter_count():
    conv1 = gpuconv.conv2d_num_params(1, 6, 5)
    conv2 = gpuconv.conv2d_num_params(6, 16, 5)
    conv3 = gpuconv.conv2d_num_params(16, 120, 5)
    fc1, fc2 = 120 * 84 + 84, 84 * 10 + 10
    assert (conv1, conv2, conv3, fc1, fc2) == (156, 2416, 48120, 10164, 850)
    assert conv1 + conv2 + conv3 + fc1 + fc2 == 61706
    s = gpuconv.conv2d_output_shape((1, 32, 32), (6, 1, 5, 5))
    assert s == (6, 28, 28)
    s = gpuconv.pool2d_output_shape(s, 2, 2)
    assert s == (6, 14, 14)
    s = gpuconv.conv2d_output_shape(s, (16, 6, 5, 5))
    s = gpuconv.pool2d_output_shape(s, 2, 2)
    assert s == (16, 5, 5)
    assert gpuconv.conv2d_output_shape(s, (120, 16, 5, 5)) == (120, 1, 1)


def test_alexnet_grouped_first_layer_weights():
    # two groups of 48 filters of 11x11x3 (docs/semantics.md, "Parameter counts"): 34,848 weights
    assert gpuconv.conv2d_num_params(6, 96, 11, groups=2, bias=False) == 11 * 11 * 3 * 48 * 2 == 34848


@pytest.mark.parametrize("padding,stride,expected", [
    ("same", 1, (7, 9)), ("valid", 1, (5, 7)), ("same", 2, (4, 5)), ("same", 3, (3, 3)),
    (((0, 2), (1, 0)), 1, (7, 8)), ((2, 0), (1, 2), (9, 4)),
])
def test_conv_output_shape_formula(padding, stride, expected):
    assert gpuconv.conv2d_output_shape((1, 2, 7, 9), (4, 2, 3, 3), stride=stride, padding=padding)[2:] == expected
    # and the real call agrees with the helper
    y = gpuconv.conv2d(np.zeros((1, 2, 7, 9), np.float32), np.zeros((4, 2, 3, 3), np.float32), stride=stride,
                       padding=padding)
    assert y.shape[2:] == expected


def test_same_padding_puts_the_odd_pixel_bottom_right():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 3, 3] = 1  # bottom-right corner
    w = np.ones((1, 1, 2, 2), np.float32)
    y = gpuconv.conv2d(x, w, padding="same")  # total pad 1 -> 0 top/left, 1 bottom/right (PyTorch)
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 3, 3] == 1 and y[0, 0, 2, 2] == 1 and y[0, 0, 0, 0] == 0


def test_same_padding_with_flip_puts_the_odd_pixel_top_left():
    """True convolution mirrors the split (SciPy's convolve2d, NumPy's convolve, MATLAB's conv2): the
    2x2 kernel's extra row and column of padding go top/left."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = 1  # top-left corner
    w = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    y = gpuconv.conv2d(x, w, padding="same", flip=True)
    assert y.shape == (1, 1, 4, 4)
    # out[p, q] = sum_{r,s} xpad[p + r, q + s] * w[1 - r, 1 - s] with one row / column of zeros on top / left
    np.testing.assert_array_equal(y[0, 0], [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("H,k,s,d,correlation,convolution", [
    (37, 4, 1, 1, (1, 2), (2, 1)),    # the 4-wide kernel
    (37, 5, 1, 1, (2, 2), (2, 2)),    # odd kernel: no odd pixel, no difference
    (29, 2, 1, 3, (1, 2), (2, 1)),    # dilation: total 3
    (37, 4, 2, 1, (1, 2), (2, 1)),    # stride 2: TF SAME total (19-1)*2 + 4 - 37 = 3
    (38, 4, 3, 1, (1, 1), (1, 1)),    # stride 3: total (13-1)*3 + 4 - 38 = 2, even
    (38, 1, 4, 1, (0, 0), (0, 0)),    # kernel shorter than the stride: total clamped at 0
])
def test_same_padding_split_by_flip(H, k, s, d, correlation, convolution):
    from gpuconv._geometry import conv_geometry, same_padding
    assert same_padding(H, k, s, d) == correlation
    assert same_padding(H, k, s, d, flip=True) == convolution
    for flip, (lo, hi) in ((False, correlation), (True, convolution)):
        g = conv_geometry((1, 1, H, H), (1, 1, k, k), None, s, "same", d, 1, flip)
        assert (g.pt, g.pb, g.pl, g.pr) == (lo, hi, lo, hi)
        assert (g.P, g.Q) == (-(-H // s),) * 2


@pytest.mark.parametrize("args,expected", [
    (((1, 1, 6, 6), 1, 2, 0, 1, True), (1, 1, 3, 3)),   # not 4: last window must start inside
    (((1, 1, 5, 5), 2, 2, 1, 1, True), (1, 1, 3, 3)),   # not 4
    (((1, 1, 5, 5), 2, 2, 1, 1, False), (1, 1, 3, 3)),
    (((1, 1, 7, 7), 3, 2, 0, 1, True), (1, 1, 3, 3)),
    (((1, 1, 8, 8), 3, 2, 0, 1, True), (1, 1, 4, 4)),
    (((2, 9, 10), 3, None, 1, 2, False), (2, 3, 3)),
])
def test_pool_output_shape(args, expected):
    assert gpuconv.pool2d_output_shape(*args) == expected


def test_num_params_validates():
    with pytest.raises(ValueError, match="divisible by groups"):
        gpuconv.conv2d_num_params(3, 10, 5, groups=2)
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        gpuconv.conv2d_num_params(3, 10, 0)
    assert gpuconv.conv2d_num_params(8, 8, (3, 1), groups=8, bias=False) == 24


# --- the geometry memo (gpuconv._geometry._memoized): a remembered call answers exactly what a fresh
# one would, and arguments that compare equal but behave differently never share an entry.

def _fresh(fn):
    return fn.__wrapped__


@pytest.mark.parametrize("args", [
    ((2, 3, 9, 7), (4, 3, 3, 3), (4,), 1, 0, 1, 1, False, None),
    ((2, 3, 9, 7), (4, 3, 3, 3), None, (2, 1), "same", [1, 2], 1, True, "sigmoid"),
    ((2, 4, 9, 7), (4, 2, 3, 1), None, 1, ((0, 2), (1, 0)), 1, 2, False, "relu"),
    ((1, 3, 115, 115), (3, 1, 5, 5), None, 1, "valid", 1, 3, False, None),  # 115 == ord("s")
])
def test_geometry_memo_answers_as_a_fresh_call(args):
    from gpuconv._geometry import conv_geometry
    conv_geometry.cache_clear()
    first = conv_geometry(*args)
    assert first == _fresh(conv_geometry)(*args)
    assert conv_geometry(*args) == first


@pytest.mark.parametrize("good,bad,error", [
    (1, True, TypeError),                 # True == 1, but a bool stride is refused
    ((1, 1), (1, True), TypeError),
    (1, 1.0, TypeError),
    (np.int64(2), np.float32(2.8e-45), TypeError),  # int32 2 and this float32 share their bytes
])
def test_geometry_memo_keeps_equal_looking_arguments_apart(good, bad, error):
    from gpuconv._geometry import conv_geometry
    conv_geometry.cache_clear()
    shapes = ((1, 2, 8, 8), (3, 2, 3, 3), None)
    assert conv_geometry(*shapes, good).sh in (1, 2)
    assert conv_geometry(*shapes, np.int32(2)).sh == 2
    with pytest.raises(error, match="stride"):
        conv_geometry(*shapes, bad)


def test_geometry_memo_does_not_remember_errors_or_keyword_calls():
    from gpuconv import _geometry
    _geometry.conv_geometry.cache_clear()
    for _ in range(2):  # a refused call is refused again
        with pytest.raises(ValueError, match="channels"):
            _geometry.conv_geometry((1, 2, 8, 8), (3, 4, 3, 3))
    g = _geometry.conv_geometry((1, 2, 8, 8), (4, 1, 3, 3), groups=2)
    assert (g.groups, g.Cg) == (2, 1)
    assert _geometry._memo_key(((1, 2), [1, 2])) != _geometry._memo_key(([1, 2], (1, 2)))
    assert _geometry._memo_key((np.int64(1),)) is None
    from gpuconv import _pool_geometry
    pool = _pool_geometry.pool_geometry((1, 1, 9, 9), 3, 2, 1, 1, True, "max_pool2d")
    assert pool == _fresh(_pool_geometry.pool_geometry)((1, 1, 9, 9), 3, 2, 1, 1, True, "max_pool2d")
    assert _pool_geometry.pool_geometry((1, 1, 9, 9), 3, 2, 1, 1, True, "max_pool2d") is pool
