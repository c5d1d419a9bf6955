"""Draw synthetic stimuli as small RGB images with captions.

The picture shows the stimulus' low-level code (background colour, gradient orientation, layout)
and one glyph per category present (each category has its own shape and colour), so image and text
guidance networks see the same structure the fMRI was generated from.
"""

from __future__ import annotations

import numpy as np

_SHAPES = ("square", "disc", "triangle", "cross", "ring", "bar")
_ADJECTIVES = ("dark", "bright", "warm", "cool", "busy", "calm", "faded", "vivid")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _glyph(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    rad = size / 2
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "disc":
        return xx**2 + yy**2 <= rad**2
    if shape == "triangle":
        return (yy + rad) >= 2 * np.abs(xx)
    if shape == "cross":
        return (np.abs(xx) < rad / 3) | (np.abs(yy) < rad / 3)
    if shape == "ring":
        d = xx**2 + yy**2
        return (d <= rad**2) & (d >= (rad / 2) ** 2)
    return np.abs(yy) < rad / 3  # bar


def render_image(low: np.ndarray, labels: np.ndarray, *, size: int, category_seed: int = 0) -> np.ndarray:
    """Return an ``(size, size, 3) uint8`` picture of one stimulus."""
    rng = np.random.default_rng(category_seed)
    colours = rng.uniform(0, 1, (len(labels), 3))
    base = _sigmoid(low[:3])
    angle = np.arctan2(low[4], low[3])
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    img = base[None, None, :] * (0.6 + 0.4 * ramp[..., None])
    glyph = max(4, size // 4)
    for j, c in enumerate(np.flatnonzero(labels)):
        # layout from the low-level code, category identity from shape and colour
        px = _sigmoid(low[(5 + 2 * j) % len(low)]) * (size - glyph)
        py = _sigmoid(low[(6 + 2 * j) % len(low)]) * (size - glyph)
        y0, x0 = int(py), int(px)
        m = _glyph(_SHAPES[c % len(_SHAPES)], glyph)
        img[y0 : y0 + glyph, x0 : x0 + glyph][m] = colours[c]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def caption(low: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> str:
    """A short English caption: an adjective from the low-level code and the category names."""
    adjective = _ADJECTIVES[int(abs(low[0] * 3 + low[1])) % len(_ADJECTIVES)]
    present = [names[c] for c in np.flatnonzero(labels)]
    if len(present) > 1:
        things = ", ".join(f"a {p}" for p in present[:-1]) + f" and a {present[-1]}"
    else:
        things = f"a {present[0]}" if present else "nothing in particular"
    return f"a {adjective} picture of {things}"
