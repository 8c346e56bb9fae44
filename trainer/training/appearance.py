"""Appearance randomisation for training (grid key `shift_kind = "appearance"`): stacked intensity, quality and
geometry changes in the spirit of BigAug (Zhang et al., IEEE TMI 2020), so that a model cannot tell a class by
the MRI sequence it was acquired with.

In the training collections the classes differ in sequence as much as in anatomy (many no-tumour slices are
T2/FLAIR, most gliomas T1 with contrast). Remapping the head's intensities through random monotone and
non-monotone curves, inversions, gamma and a smooth bias field makes a T1-looking crop look like other
sequences (an inverted T1 has bright CSF and dark white matter, as a T2 has) while the anatomy stays put.
Each transform is one small function; `random_appearance` stacks them with their own probabilities.
"""

from __future__ import annotations

import cv2
import numpy as np

from trainer.data.shifts import random_shift

HEAD_LEVEL = 12  # grey level above which a crop's pixel counts as head, not background
CURVE_KNOTS = 6


def head_mask(grey: np.ndarray) -> np.ndarray:
    """The head: grey > HEAD_LEVEL, holes filled by a closing, so that the intensity maps leave the
    background black as every MRI export has it."""
    mask = (grey > HEAD_LEVEL).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    return mask.astype(bool)


def monotone_curve(rng: np.random.Generator) -> np.ndarray:
    """A random increasing map of [0, 1] onto itself (a lookup of 256 levels): contrast stretched in some
    ranges and squeezed in others."""
    knots = np.sort(rng.random(CURVE_KNOTS - 2))
    values = np.sort(rng.random(CURVE_KNOTS - 2))
    return np.interp(np.linspace(0, 1, 256), [0, *knots, 1], [0, *values, 1])


def free_curve(rng: np.random.Generator) -> np.ndarray:
    """A random non-monotone map of [0, 1] (a lookup of 256 levels): tissues swap their order of brightness, as
    they do between sequences."""
    knots = np.sort(rng.random(CURVE_KNOTS - 2))
    values = rng.random(CURVE_KNOTS)
    return np.interp(np.linspace(0, 1, 256), [0, *knots, 1], values)


def bias_field(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field around 1 (coil inhomogeneity): a 4×4 grid of random gains, upsampled
    bicubically, within 1 ± strength."""
    grid = rng.uniform(1 - strength, 1 + strength, (4, 4)).astype(np.float32)
    return np.clip(cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0.2, 2.0)


def remap_head(grey: np.ndarray, mask: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Apply a curve (256 levels → [0, 1]) to the head's pixels, rescaled so that the head's 99th percentile
    keeps its level; the background stays as it was."""
    out = grey.astype(np.float32)
    if not mask.any():
        return grey
    top = max(float(np.percentile(out[mask], 99)), 1.0)
    mapped = curve[np.clip(out / top * 255, 0, 255).astype(np.uint8)] * top
    out[mask] = mapped[mask]
    return np.clip(out, 0, 255).astype(np.uint8)


def random_appearance(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random appearance of a prepared crop (uint8 HxWx3, grey in RGB): inversion (p 0.3), a non-monotone
    (p 0.3) or monotone (p 0.4) intensity curve, gamma (p 0.5), a bias field (p 0.5), all inside the head;
    then one random acquisition shift (robustness.random_shift: blur, noise, rotation, resolution, JPEG,
    mirroring)."""
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {img.dtype} {img.shape}")
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    mask = head_mask(grey)
    levels = np.linspace(0, 1, 256)
    if rng.random() < 0.3:
        grey = remap_head(grey, mask, 1.0 - levels * 0.95)  # inverted, the darkest tissue not quite white
    draw = rng.random()
    if draw < 0.3:
        grey = remap_head(grey, mask, free_curve(rng))
    elif draw < 0.7:
        grey = remap_head(grey, mask, monotone_curve(rng))
    if rng.random() < 0.5:
        grey = remap_head(grey, mask, levels ** float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))))
    if rng.random() < 0.5:
        field = bias_field(grey.shape[:2], rng, float(rng.uniform(0.1, 0.4)))
        grey = np.where(mask, np.clip(grey * field, 0, 255), grey).astype(np.uint8)
    return random_shift(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), rng)
