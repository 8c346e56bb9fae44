"""Render class maps as a colour overlay on the 150×150 crop the models saw (PNG)."""

from __future__ import annotations

import cv2
import numpy as np


def combine(maps: list[np.ndarray], size: int) -> np.ndarray:
    """Average the models' (h, w) maps after resizing each to size × size; scaled to 0–1."""
    if not maps:
        raise ValueError("no class maps to combine")
    resized = [cv2.resize(np.asarray(m, np.float32), (size, size), interpolation=cv2.INTER_CUBIC) for m in maps]
    mean = np.mean(resized, axis=0)
    span = float(mean.max() - mean.min())
    return np.zeros_like(mean) if span <= 1e-12 else (mean - mean.min()) / span


def peak(heat: np.ndarray) -> tuple[float, float]:
    """(x, y) of the hottest point, as fractions of the width and height."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return (x + 0.5) / heat.shape[1], (y + 0.5) / heat.shape[0]


def overlay_png(crop_rgb: np.ndarray, heat: np.ndarray, scale: int = 2, alpha: float = 0.45) -> bytes:
    """crop (H, W, 3) uint8 RGB + heat (H, W) 0–1 → PNG bytes of the blend, upscaled `scale` times."""
    colour = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)  # BGR
    bgr = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR)
    blend = cv2.addWeighted(bgr, 1 - alpha, colour, alpha, 0)
    if scale != 1:
        blend = cv2.resize(blend, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    ok, png = cv2.imencode(".png", blend)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()
