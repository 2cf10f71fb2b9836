"""The training demo (``python -m gpuconv train``, gpuconv/train.py) and the LeNet-5 it trains (gpuconv/lenet.py):
the network's gradients against PyTorch autograd on the same parameters, the loss gradient against finite
differences, a short run that learns, and (slow) the full run reaching 95% test accuracy."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from gpuconv import lenet, train
from gpuconv.__main__ import main as cli
from tests.runners import torch



def _needs_sklearn():
    pytest.importorskip("sklearn", reason="scikit-learn (the digits) not installed")


def test_softmax_cross_entropy_gradient_is_the_finite_difference():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 10))
    labels = rng.integers(0, 10, 5)
    loss, grad = train.softmax_cross_entropy(logits, labels, np)
    eps = 1e-6
    for i, j in ((0, 0), (2, 7), (4, 3)):
        up, down = logits.copy(), logits.copy()
        up[i, j] += eps
        down[i, j] -= eps
        numeric = (train.softmax_cross_entropy(up, labels, np)[0] - train.softmax_cross_entropy(down, labels, np)[0])
        assert abs(numeric / (2 * eps) - grad[i, j]) < 1e-6
    assert loss > 0


@pytest.mark.torch
def test_lenet_gradients_match_pytorch_autograd():
    """Forward and backward of the whole network in float64 against the same network in PyTorch."""
    if torch is None:
        pytest.skip("torch not installed")
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    params = lenet.lenet5_params(np, np.float64, rng)
    for name in params:  # non-zero biases, so their gradients and use are checked too
        params[name] = (params[name][0], rng.standard_normal(params[name][1].shape) * 0.1)
    x = rng.standard_normal((3, 1, 32, 32))
    trace = []
    out = lenet.forward(x, params, trace)
    g_out = rng.standard_normal(out.shape)
    grads = lenet.backward(g_out, params, trace)

    tp = {n: [torch.tensor(a, requires_grad=True) for a in pair] for n, pair in params.items()}
    h = torch.tensor(x)
    for name, kind, _, k in lenet.LENET5:
        if kind == "maxpool":
            h = F.max_pool2d(h, k, k)
        else:
            h = F.conv2d(h, *tp[name])
            h = h if name == "fc2" else torch.tanh(h)
    np.testing.assert_allclose(out, h.detach().numpy(), rtol=1e-10, atol=1e-12)
    (h * torch.tensor(g_out)).sum().backward()
    for name, (gw, gb) in grads.items():
        np.testing.assert_allclose(gw, tp[name][0].grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)
        np.testing.assert_allclose(gb, tp[name][1].grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def test_digits_are_loaded_upscaled_and_split():
    _needs_sklearn()
    x_train, y_train, x_test, y_test = train.load_digits_32()
    assert x_train.shape == (1438, 1, 32, 32) and x_test.shape == (359, 1, 32, 32)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert abs(float(x_train.mean())) < 1e-5 and set(np.unique(y_test)) == set(range(10))
    # each 8x8 pixel became a 4x4 block
    assert np.all(x_train[:, :, ::4, ::4].repeat(4, axis=2).repeat(4, axis=3) == x_train)


def test_a_short_run_learns():
    _needs_sklearn()
    logs = []
    history = train.train(np, epochs=2, batch=32, limit=320, log=logs.append)
    assert len(history.loss) == 2 and history.loss[1] < history.loss[0]
    assert history.accuracy[-1] > 0.3  # chance is 0.1
    assert logs[0].startswith("epoch  1: loss ")


@pytest.mark.slow
def test_the_full_run_reaches_95_percent(capsys):
    _needs_sklearn()
    assert cli(["train", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    final = float(out.rsplit("final test accuracy ", 1)[1].split("%")[0])
    assert final >= 95.0, out


def test_without_scikit_learn_it_says_how_to_install_it(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    assert cli(["train", "--device", "cpu", "--epochs", "1"]) == 2
    assert "pip install 'gpuconv[train]'" in capsys.readouterr().err


def test_demo_runs_the_same_network_forward(capsys):
    assert cli(["demo", "--batch", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "on CPU (NumPy path)" in out and out.rstrip().splitlines()[-1].split()[:2] == ["total", "(2,"]
    assert "61,706" in out.rstrip().splitlines()[-1]
