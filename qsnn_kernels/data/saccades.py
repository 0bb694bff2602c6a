"""Event streams from still images by simulated sensor saccades (the way N-MNIST was made from MNIST).

The image moves along a closed path of straight segments over a slightly larger canvas (sub-pixel
positions by bilinear interpolation); at each fine time step every canvas pixel's log intensity is
compared with that pixel's reference level, and one event is emitted per contrast threshold crossed
(ON when brighter, OFF when darker), after which the reference moves by the thresholds crossed: the
DVS pixel model. Events are a structured numpy array with fields x, y, t (microseconds), p (1 = ON,
0 = OFF), the layout tonic uses, so tonic's transforms apply.
"""

from __future__ import annotations

import numpy as np

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])

# Three saccades forming a triangle, as offsets (dx, dy) in pixels from the canvas origin + margin.
TRIANGLE = ((0.0, 0.0), (1.0, 2.0), (2.0, 0.0), (0.0, 0.0))


def render(image: np.ndarray, canvas_hw: tuple[int, int], ox: float, oy: float) -> np.ndarray:
    """The image with its top-left corner at (ox, oy) >= 0 on a zero canvas, bilinear sub-pixel."""
    h, w = image.shape
    ch, cw = canvas_hw
    ix, iy = int(np.floor(ox)), int(np.floor(oy))
    fx, fy = ox - ix, oy - iy
    if ix < 0 or iy < 0 or ix + w + 1 > cw + 1 or iy + h + 1 > ch + 1:
        raise ValueError(f"offset ({ox}, {oy}) moves the {h}x{w} image off the {ch}x{cw} canvas")
    big = np.zeros((ch + 1, cw + 1), dtype=np.float64)
    out = np.zeros_like(big)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            if wx * wy == 0.0:
                continue
            big[:] = 0.0
            big[iy + dy:iy + dy + h, ix + dx:ix + dx + w] = image
            out += wx * wy * big
    return out[:ch, :cw]


def saccade_events(image: np.ndarray, *, margin: int = 2, path=TRIANGLE, steps_per_saccade: int = 20,
                   step_us: int = 1000, threshold: float = 0.2, threshold_sigma: float = 0.02,
                   eps: float = 0.1, seed: int = 0) -> np.ndarray:
    """Events of one image seen by a DVS sensor moving along `path`.

    image: [H, W] intensities in [0, 1]. The canvas is [H + 2*margin, W + 2*margin]; the image's
    top-left sits at (margin - 1 + dx, margin - 1 + dy) for each path offset (dx, dy) in pixels, so
    offsets must lie in [-(margin-1), margin+1]. Each path segment takes `steps_per_saccade` steps of
    `step_us` microseconds. Log intensity is log(I + eps). Each pixel's threshold is `threshold`
    times (1 + N(0, threshold_sigma)) drawn from `seed` (pixel mismatch). Returns EVENT_DTYPE events
    sorted by t, then y, then x. Deterministic for a given seed.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be [H, W], got shape {image.shape}")
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    h, w = image.shape
    canvas = (h + 2 * margin, w + 2 * margin)
    rng = np.random.default_rng(seed)
    thr = threshold * np.clip(1.0 + threshold_sigma * rng.standard_normal(canvas), 0.5, 1.5)
    base = margin - 1

    def log_at(dx, dy):
        return np.log(render(image, canvas, base + dx, base + dy) + eps)

    ref = log_at(*path[0])
    chunks = []
    step = 0
    for (x0, y0), (x1, y1) in zip(path[:-1], path[1:]):
        for k in range(1, steps_per_saccade + 1):
            step += 1
            a = k / steps_per_saccade
            diff = log_at(x0 + a * (x1 - x0), y0 + a * (y1 - y0)) - ref
            n = np.floor(np.abs(diff) / thr).astype(np.int64)
            ys, xs = np.nonzero(n)
            if ys.size == 0:
                continue
            counts = n[ys, xs]
            sign = np.sign(diff[ys, xs])
            ref[ys, xs] += sign * counts * thr[ys, xs]
            ev = np.zeros(int(counts.sum()), dtype=EVENT_DTYPE)
            ev["x"] = np.repeat(xs, counts)
            ev["y"] = np.repeat(ys, counts)
            ev["t"] = step * step_us
            ev["p"] = np.repeat((sign > 0).astype(np.int8), counts)
            chunks.append(ev)
    if not chunks:
        return np.zeros(0, dtype=EVENT_DTYPE)
    return np.concatenate(chunks)


def sensor_size(image_hw: tuple[int, int], margin: int = 2) -> tuple[int, int, int]:
    """tonic's sensor size (W, H, polarities) of the canvas for an [H, W] image."""
    return (image_hw[1] + 2 * margin, image_hw[0] + 2 * margin, 2)
