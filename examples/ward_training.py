"""The ward's federated training of `risk_classifier` (examples/healthcare_vitals.ef).

`samples` is each bedside hub's labelled data: synthetic vital-sign windows, deterministic, and
non-IID across hubs (every bed sees its own mix of risk classes and its own patient baseline),
with a held-out test set. `train` is one hub's local training, numpy in and out: it fine-tunes
the classifier's head (`fc1`, `fc2`) on features of the frozen convolutions.

Only `edgeflow train` (and a deployed client) imports this file; `edgeflow check` never does.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

CLASSES = 4  # 0 stable, 1 tachycardia, 2 hypoxaemia, 3 bradypnoea with fever
RATE = 250   # samples per second of a window


def _window(rng: np.random.Generator, label: int, baseline: float) -> np.ndarray:
    """One second of 6 channels: three ECG-like harmonics, respiration, SpO2, temperature."""
    t = np.arange(RATE) / RATE
    heart = rng.uniform(2.2, 3.0) if label == 1 else rng.uniform(0.9, 1.6)       # Hz
    breath = rng.uniform(0.05, 0.12) if label == 3 else rng.uniform(0.2, 0.45)
    spo2 = rng.uniform(0.70, 0.82) if label == 2 else rng.uniform(0.94, 1.0)
    temp = rng.uniform(0.6, 1.0) if label == 3 else rng.uniform(-0.3, 0.3)
    tremor = 0.25 if label == 1 else 0.05  # the fast rhythm's jitter on the ECG leads
    channels = [np.sin(2 * np.pi * heart * k * t + rng.uniform(0, 2 * np.pi)) / k
                + rng.normal(0, tremor, RATE) for k in (1, 2, 3)]
    channels += [np.sin(2 * np.pi * breath * t + rng.uniform(0, 2 * np.pi)),
                 np.full(RATE, spo2), np.full(RATE, temp + baseline)]
    return (np.stack(channels) + rng.normal(0, 0.05, (6, RATE))).astype(np.float32)


def samples(instance: int, count: int) -> dict[str, np.ndarray]:
    """Hub `instance`'s labelled windows: 96 to train on and 32 held out, the same every call.
    Each hub's class mix is drawn from a Dirichlet(0.6) (skewed: most beds rarely see some
    classes) and its temperature channel carries a per-patient baseline."""
    rng = np.random.default_rng(1000 + instance)
    mix = rng.dirichlet(np.full(CLASSES, 0.8))
    baseline = rng.uniform(-0.2, 0.2)
    labels = rng.choice(CLASSES, size=128, p=mix)
    x = np.stack([_window(rng, int(y), baseline) for y in labels])
    return {"x_train": x[:96], "y_train": labels[:96].astype(np.int64),
            "x_test": x[96:], "y_test": labels[96:].astype(np.int64)}


def _conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """1-D convolution of a batch (N, C, L) with (O, C, K) weights, as the model's Conv."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2], axis=2)[:, :, ::stride]  # N, C, L', K
    return np.einsum("nclk,ock->nol", windows, w, optimize=True)


def features(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The 64 pooled features the head sees: the model's frozen convolutions."""
    h = np.maximum(_conv(x, weights["conv1_w"], 2, 3), 0)
    h = np.maximum(_conv(h, weights["conv2_w"], 2, 2), 0)
    return h.mean(axis=2)


def train(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
          config: dict[str, float | int | str]) -> tuple[dict[str, np.ndarray], float]:
    """Mini-batch Adam on the head's cross-entropy (the pooled features differ in scale by
    orders of magnitude, which plain SGD trains slowly); returns the new head and the mean
    training loss of the last epoch."""
    lr, epochs, batch = float(config.get("lr", 0.01)), int(config.get("epochs", 1)), \
        int(config.get("batch", 32))
    rng = np.random.default_rng(int(config.get("seed", 0)))
    f = features(weights, x)
    head = {k: weights[k].astype(np.float64) for k in ("fc1_w", "fc1_b", "fc2_w", "fc2_b")}
    m = {k: np.zeros_like(v) for k, v in head.items()}
    v2 = {k: np.zeros_like(v) for k, v in head.items()}
    step, loss = 0, 0.0
    for _ in range(epochs):
        order, losses = rng.permutation(len(y)), []
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            fb, yb = f[idx], y[idx]
            z1 = fb @ head["fc1_w"] + head["fc1_b"]
            h1 = np.maximum(z1, 0)
            z2 = h1 @ head["fc2_w"] + head["fc2_b"]
            p = np.exp(z2 - z2.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            losses.append(float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).mean()))
            g2 = p
            g2[np.arange(len(yb)), yb] -= 1
            g2 /= len(yb)
            g1 = (g2 @ head["fc2_w"].T) * (z1 > 0)
            grads = {"fc2_w": h1.T @ g2, "fc2_b": g2.sum(axis=0),
                     "fc1_w": fb.T @ g1, "fc1_b": g1.sum(axis=0)}
            step += 1
            for k, g in grads.items():
                m[k] = 0.9 * m[k] + 0.1 * g
                v2[k] = 0.999 * v2[k] + 0.001 * g * g
                m_hat, v_hat = m[k] / (1 - 0.9**step), v2[k] / (1 - 0.999**step)
                head[k] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        loss = float(np.mean(losses))
    return {k: v.astype(np.float32) for k, v in head.items()}, loss
