"""Fine-tuning the whole network on images drawn and randomised anew each epoch (recipe `fine_tune_all`).

A cached-view recipe fixes the low-level features and sees a few precomputed views per image; here every crop goes
through the whole backbone with a fresh random appearance (training.appearance: non-monotone curves, inversion,
gamma, bias field inside the head, then blur/noise/rotation/resolution/JPEG), so that no intensity pattern of one
sequence or one collection stays a shortcut. Balanced sampling draws source × class × sequence cells more evenly.
Each epoch's weights are scored on validation and on the tie-broken check (data.tiebroken); the kept
checkpoint is chosen by `choose_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from trainer.data.dataset import CLASSES, Prepared
from trainer.data.shifts import random_shift
from trainer.data.tiebroken import check_indices, figures_of
from trainer.training.appearance import random_appearance

# the sequence names roots give → the groups of trainer.models.sequence (T2 and FLAIR are one group)
LISTED_GROUP = {"T1": "T1", "T1C": "T1C", "FLAIR": "T2", "T2": "T2"}
MIN_MACRO_F1 = 0.95  # a checkpoint below this validation macro-F1 loses the original data (choose_checkpoint)


def sequence_cells(p: Prepared, probe_groups: np.ndarray | None) -> np.ndarray:
    """Per image, its sequence: the root's where it gives one, else the sequence probe's group (int index into
    trainer.models.sequence.SEQUENCE_GROUPS), else ''."""
    from trainer.models.sequence import SEQUENCE_GROUPS

    out = np.array([LISTED_GROUP.get(str(s), "") for s in p.sequence], dtype=object)
    if probe_groups is not None:
        unknown = out == ""
        out[unknown] = np.asarray(SEQUENCE_GROUPS, dtype=object)[probe_groups[unknown]]
    return out.astype(str)


def balanced_weights(cells: np.ndarray) -> np.ndarray:
    """Sampling probability per image ∝ 1/√(count of its cell): large cells lose weight, small ones are not
    repeated to overfitting. Sums to 1."""
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    w = 1.0 / np.sqrt(counts[inverse].astype(float))
    return w / w.sum()


def online_crop(img: np.ndarray, rng: np.random.Generator, appearance_p: float) -> np.ndarray:
    """One training view of a prepared crop: a random appearance with probability appearance_p, else an
    acquisition shift (p 0.5) or the crop itself; mirrored half the time."""
    if rng.random() < appearance_p:
        out = random_appearance(img, rng)
    elif rng.random() < 0.5:
        out = random_shift(img, rng)
    else:
        out = img
    return np.ascontiguousarray(out[:, ::-1] if rng.random() < 0.5 else out)


class OnlineSampler(keras.utils.PyDataset):
    """Training batches of crops randomised anew each epoch: every image of `index` once in a new order
    (probabilities None), or len(index) draws with replacement by `probabilities`."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        index: np.ndarray,
        batch_size: int,
        seed: int,
        appearance_p: float,
        probabilities: np.ndarray | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.x, self.y, self.index = x, y, np.asarray(index)
        self.batch_size, self.appearance_p, self.probabilities = batch_size, appearance_p, probabilities
        self.seed, self.epoch = seed, 0
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        if self.probabilities is None:
            self.order = rng.permutation(self.index)
        else:
            self.order = rng.choice(self.index, size=len(self.index), p=self.probabilities)

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        rngs = np.random.default_rng([self.seed, self.epoch, i]).spawn(len(rows))
        x = np.stack([online_crop(self.x[j], r, self.appearance_p) for j, r in zip(rows, rngs, strict=True)])
        return x.astype(np.float32), self.y[rows]


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int = len(CLASSES)) -> float:
    f1 = []
    for k in range(n_classes):
        tp = float(((pred == k) & (y == k)).sum())
        denom = float((pred == k).sum() + (y == k).sum())
        if (y == k).any():
            f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1)) if f1 else 0.0


def score(model: keras.Model, p: Prepared, va: np.ndarray, batch_size: int = 64) -> dict[str, Any]:
    """Validation accuracy and macro-F1, and the tie-broken check's figures, of a model's current weights."""
    check = check_indices(p)
    idx = np.concatenate([va, check])
    pred = np.asarray(model.predict(p.x[idx].astype(np.float32), batch_size=batch_size, verbose=0)).argmax(1)
    pv, pc = pred[: len(va)], pred[len(va) :]
    return {
        "val_accuracy": round(float((pv == p.y[va]).mean()), 4) if len(va) else None,
        "val_macro_f1": round(macro_f1(p.y[va], pv), 4) if len(va) else None,
        "check": figures_of(p, pc, check),
    }


def choose_checkpoint(scores: dict[str, dict[str, Any]]) -> str:
    """The checkpoint to keep: among those with validation macro-F1 ≥ MIN_MACRO_F1 (all, if none is), the highest
    worst tie-broken cell, then the highest share of partial tumour labels answered as a tumour, then macro-F1."""

    def key(name: str) -> tuple[float, float, float]:
        s = scores[name]
        worst = (s["check"].get("worst") or {}).get("accuracy") or 0.0
        shares = [r["answered_tumour"] for r in s["check"]["sources"] if "answered_tumour" in r]
        return float(worst), float(min(shares)) if shares else 0.0, float(s["val_macro_f1"] or 0.0)

    eligible = [n for n, s in scores.items() if (s["val_macro_f1"] or 0.0) >= MIN_MACRO_F1] or list(scores)
    return max(eligible, key=key)


class Checkpoints(keras.callbacks.Callback):
    """After each epoch: score the weights (validation + tie-broken check), save them, and keep a running mean of
    the weights from epoch `average_from` on (scored as `mean` at the end). `scored`: the full model on images, when
    the model being fitted is its top on cached tensors (they share layers); default the fitted model."""

    def __init__(
        self,
        p: Prepared,
        va: np.ndarray,
        folder: Path,
        average_from: int,
        log: str = "",
        scored: keras.Model | None = None,
    ) -> None:
        super().__init__()
        self.p, self.va, self.folder, self.average_from, self.log = p, va, folder, average_from, log
        self.scored = scored
        self.scores: dict[str, dict[str, Any]] = {}
        self.mean: list[np.ndarray] | None = None
        self.averaged = 0
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def full(self) -> keras.Model:
        return self.scored if self.scored is not None else self.model

    def _record(self, name: str) -> None:
        from trainer.data.tiebroken import headline

        s = score(self.full, self.p, self.va)
        self.scores[name] = s
        self.full.save_weights(self.folder / f"{name}.weights.h5")
        print(f"{self.log}[{name}] val macro-F1 {s['val_macro_f1']}, check: {headline(s['check'])}", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._record(f"epoch-{epoch + 1:02d}")
        if epoch + 1 >= self.average_from:
            w = [np.asarray(v, np.float64) for v in self.full.get_weights()]
            self.averaged += 1
            self.mean = (
                w if self.mean is None else [m + (v - m) / self.averaged for m, v in zip(self.mean, w, strict=True)]
            )

    def finish(self, choose: bool = True) -> str:
        """Score the mean weights (if more than one epoch was averaged), load the chosen checkpoint (choose_checkpoint;
        the last epoch's without `choose`) into the model, write scores.json; returns the checkpoint's name."""
        last_epoch = list(self.scores)[-1]
        if self.mean is not None and self.averaged > 1:
            last = self.full.get_weights()
            self.full.set_weights([m.astype(v.dtype) for m, v in zip(self.mean, last, strict=True)])
            self._record(f"mean-{self.averaged}")
        chosen = choose_checkpoint(self.scores) if choose else last_epoch
        self.full.load_weights(self.folder / f"{chosen}.weights.h5")
        (self.folder / "scores.json").write_text(json.dumps({"chosen": chosen, "scores": self.scores}, indent=1))
        print(f"{self.log}kept checkpoint {chosen}", flush=True)
        return chosen
