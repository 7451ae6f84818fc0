"""Synthetic data for the demo: nothing is downloaded at run time.

`mnist_like` draws 28x28 "digit" images in [0, 1]: each class has a
prototype made of a few smooth strokes; a sample is its class prototype,
shifted by up to 2 pixels, blended with another class's prototype (so that
classes overlap, as real handwriting does: on cleanly separable data the
seed-000 failure does not reproduce), plus pixel noise.
"""

import numpy as np

SIDE = 28
CLASSES = 10


def _prototypes(rng):
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    protos = []
    for _ in range(CLASSES):
        img = np.zeros((SIDE, SIDE), np.float32)
        for _ in range(3):  # three strokes
            p = rng.uniform(6, 22, size=2)
            direction = rng.normal(size=2)
            for _ in range(14):
                direction = 0.8 * direction + 0.6 * rng.normal(size=2)
                direction /= np.linalg.norm(direction) + 1e-6
                p = np.clip(p + 1.2 * direction, 3, 24)
                img += np.exp(-((yy - p[0]) ** 2 + (xx - p[1]) ** 2) / 2.0)
        protos.append(np.clip(img, 0, 1))
    return np.stack(protos)


def mnist_like(n, seed=0, blend=0.55, noise=0.1):
    """Returns (x [n, 784] float32 in [0, 1], labels [n] int64).

    Arguments:
      n: number of samples.
      seed: the generator's seed (prototypes depend on it too).
      blend: largest weight of the other class's prototype in a sample.
      noise: standard deviation of the pixel noise.
    """
    rng = np.random.default_rng(seed)
    protos = _prototypes(np.random.default_rng(1234))  # fixed "alphabet"
    labels = rng.integers(0, CLASSES, size=n)
    others = (labels + rng.integers(1, CLASSES, size=n)) % CLASSES
    weights = rng.uniform(0, blend, size=n).astype(np.float32)
    x = (1 - weights)[:, None, None] * protos[labels] \
        + weights[:, None, None] * protos[others]
    shifts = rng.integers(-2, 3, size=(n, 2))
    for k in range(n):
        x[k] = np.roll(x[k], tuple(shifts[k]), axis=(0, 1))
    x = x + noise * rng.normal(size=x.shape).astype(np.float32)
    x = np.clip(x, 0, 1).astype(np.float32).reshape(n, SIDE * SIDE)
    return x, labels.astype(np.int64)


def one_hot(labels, classes=CLASSES):
    return np.eye(classes, dtype=np.float32)[labels]
