"""``python -m gpuconv train``: LeNet-5 trained with gpuconv's forward and backward ops on the handwritten digits
that ship with scikit-learn (1,797 images of 8x8 pixels, upscaled to 32x32), on the GPU when CuPy is usable,
else with NumPy.

Everything a layer computes is a gpuconv call (``gpuconv.lenet``); the rest is a few lines of array code: the
softmax cross-entropy loss and its gradient, and SGD with momentum. The data is split once (a fixed seed) into
a training and a test set; each epoch prints the mean training loss, the test accuracy and the time.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import lenet

SKLEARN_MISSING = ("the training demo needs the digits that ship with scikit-learn: "
                   "pip install 'gpuconv[train]' (or pip install scikit-learn)")


def load_digits_32(test_fraction: float = 0.2, seed: int = 0):
    """``(x_train, y_train, x_test, y_test)``: scikit-learn's digits, each 8x8 image (values 0..16) upscaled to
    32x32 by repeating every pixel 4x4, scaled to [0, 1] and centred by the training set's mean; labels int64.
    Raises ImportError (with how to install it) without scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(SKLEARN_MISSING) from exc
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((4, 4)))[:, None].astype(np.float32)  # (n, 1, 32, 32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    mean = images[train].mean()
    return images[train] - mean, labels[train], images[test] - mean, labels[test]


def softmax_cross_entropy(logits, labels, xp):
    """Mean loss over the batch and its gradient w.r.t. ``logits`` (N, 10)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    prob = exp / exp.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    rows = xp.arange(n)
    loss = -xp.log(prob[rows, labels] + 1e-12).mean()
    grad = prob.copy()
    grad[rows, labels] -= 1
    return loss, grad / n


@dataclass
class History:
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def accuracy(params, x, y, xp, batch: int = 256) -> float:
    correct = 0
    for i in range(0, len(y), batch):
        logits = lenet.forward(x[i:i + batch], params).reshape(-1, 10)
        correct += int((logits.argmax(axis=1) == y[i:i + batch]).sum())
    return correct / len(y)


def train(xp, epochs: int = 10, batch: int = 32, lr: float = 0.05, momentum: float = 0.9, seed: int = 0,
          limit: int | None = None, log=print) -> History:
    """Train LeNet-5 on the digits with arrays of ``xp`` (numpy or cupy); returns the per-epoch history.
    ``limit`` keeps only that many training images (for quick tests)."""
    x_train, y_train, x_test, y_test = load_digits_32(seed=seed)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    x_train, y_train, x_test, y_test = (xp.asarray(a) for a in (x_train, y_train, x_test, y_test))
    rng = np.random.default_rng(seed)
    params = lenet.lenet5_params(xp, np.float32, rng)
    velocity = {name: tuple(xp.zeros_like(p) for p in pair) for name, pair in params.items()}
    history = History()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = xp.asarray(rng.permutation(len(y_train)))
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            trace: list = []
            logits = lenet.forward(x_train[idx], params, trace)
            loss, grad_logits = softmax_cross_entropy(logits.reshape(-1, 10), y_train[idx], xp)
            grads = lenet.backward(grad_logits.reshape(logits.shape).astype(np.float32), params, trace)
            for name, (w, b) in params.items():
                for p, g, v in zip((w, b), grads[name], velocity[name]):
                    v *= momentum
                    v -= lr * g
                    p += v
            total += float(loss) * len(idx)
        acc = accuracy(params, x_test, y_test, xp)
        history.loss.append(total / len(order))
        history.accuracy.append(acc)
        history.seconds.append(time.perf_counter() - t0)
        log(f"epoch {epoch:2d}: loss {history.loss[-1]:.4f}, test accuracy {100 * acc:.1f}%, "
            f"{history.seconds[-1]:.1f} s")
    return history


def save_plot(history: History, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = range(1, len(history.loss) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, history.loss, "o-", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [100 * a for a in history.accuracy], "s-", color="tab:green", label="test accuracy")
    ax2.set_ylabel("test accuracy (%)")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title("LeNet-5 on the digits, trained with gpuconv")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def array_module(device: str, command: str):
    """``(xp, where)`` for ``--device`` auto / cpu / gpu: CuPy when it is usable and not refused, else NumPy;
    ``(None, None)`` after saying why when ``gpu`` was asked for and CuPy is not usable."""
    import gpuconv
    cupy_info = gpuconv.backend_info()["cupy"]
    use_gpu = cupy_info["available"] and device != "cpu"
    if device == "gpu" and not use_gpu:
        print(f"{command}: --device gpu asked for, but {cupy_info['reason']}", file=sys.stderr)
        return None, None
    if use_gpu:
        import cupy
        return cupy, "GPU (CuPy, gpuconv CUDA kernels)"
    return np, "CPU (NumPy path)"


def main(args) -> int:
    xp, where = array_module(args.device, "train")
    if xp is None:
        return 2
    try:
        print(f"LeNet-5 ({lenet.NUM_PARAMS:,} parameters) on scikit-learn's digits, float32, on {where}; "
              f"{args.epochs} epochs, batch {args.batch}, SGD lr {args.lr} momentum 0.9")
        history = train(xp, args.epochs, args.batch, args.lr, limit=args.limit)
    except ImportError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    print(f"final test accuracy {100 * history.accuracy[-1]:.1f}% after {sum(history.seconds):.0f} s")
    if args.plot:
        save_plot(history, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def add_arguments(p) -> None:
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--limit", type=int, default=None, help="train on only this many images (a quick run)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--plot", metavar="PNG", help="save the loss / accuracy curves (needs matplotlib)")
