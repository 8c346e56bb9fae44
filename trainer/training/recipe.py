"""One grid entry as a typed recipe: field types, ranges and the rules that tie fields together.

A grid file expands into plain config dicts (what `config.json` of a run and the leaderboard store); `Recipe.of`
reads such a dict back, so a stored run and a fresh grid entry are checked by the same rules. Errors name the grid
file, the table and the key (`GridError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Family = Literal["ann", "cnn", "resnet", "transfer"]
FAMILIES: tuple[str, ...] = ("ann", "cnn", "resnet", "transfer")

# the keys each family's builder reads, beyond the shared recipe
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "ann": ("dense_layers", "units"),
    "cnn": ("conv_layers", "filters", "dense_layers"),
    "resnet": ("stages", "width"),
    "transfer": ("backbone", "dense_layers"),
}


class GridError(ValueError):
    """A grid file (or a stored config) that breaks a recipe rule; the message names the file, table and key."""


def held_out_tag(source: str) -> str:
    """The run-name part that marks a leave-one-source-out run: `no-<source>`, spaces as underscores."""
    return f"no-{source.replace(' ', '_')}"


def seed_tag(seed: int) -> str:
    """The run-name part that marks an initialisation seed other than the split's: `s<seed>` (SEED_TAG finds it)."""
    return f"s{seed}"


SEED_TAG = re.compile(r"-s\d+(?=-|$)")  # seed_tag inside a run name


class Recipe(BaseModel):
    """A training recipe: the model family with its shape, and how it is trained and evaluated.

    Args (fields):
        family: `ann`, `cnn`, `resnet` or `transfer`.
        protocol: `official` (the dataset's Training/Testing folders) or `pooled` (a duplicate-aware 80/20 split).
        init_seed: seed of initialisation, shuffling and augmentation when it differs from `seed` (which also
            draws the validation split).
        backbone_input: square size a transfer model resizes to inside its graph (None: the 150 px crop).
        multiscale: pool several backbone blocks; a frozen head trained on cached features.
        shift_views: randomly shifted views of every image cached beside the identity and mirror views.
        shift_kind: acquisition (robustness.random_shift) or appearance (training.appearance: intensity curves,
            inversion, gamma and bias field inside the head, then an acquisition shift).
        exclude_source: a source (Prepared.source) left out of training and validation: a cross-source run.
        balance: class (each class weighs the same) or class_group (each class × MRI sequence group cell, softened:
            weight ∝ 1/√count, so a model cannot lean on sequence where the classes come in different sequences), or
            source_class_sequence (each source × class × sequence cell, the same softening: no root's look decides).
        fine_tune_blocks / fine_tune_on: phase 2 unfreezes this many top blocks, trained on the cache or images.
        fine_tune_all: phase 2 trains every backbone layer but BatchNorm, end to end on images (training.online:
            crops drawn and randomised anew each epoch); per-epoch checkpoints are scored on validation and the
            tie-broken check and one is kept by `checkpoint`.
        appearance_p: (fine_tune_all) share of training crops given a random appearance (training.appearance) on
            the fly; the others get an acquisition shift (p 0.5) or none, mirrored half the time.
        sampling: (fine_tune_all) shuffle (every training image once an epoch) or balanced (drawn with weight
            ∝ 1/√count of its source × class × sequence cell, so that no root's look decides).
        checkpoint: (fine-tuning) last, or check: every epoch's weights scored on validation and the tie-broken
            check; among them and their mean over the second half, the one training.online.choose_checkpoint picks.
        reduce_lr_patience: epochs without a lower val_loss before the learning rate is divided by 3 (0: never).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    family: Family
    name: str | None = None
    protocol: Literal["official", "clean", "pooled"] = "official"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    patience: int = Field(4, ge=0)
    augment: bool = True
    seed: int = 42
    init_seed: int | None = None
    val_fraction: float = Field(0.15, gt=0, lt=1)
    reduce_lr_patience: int = Field(0, ge=0)
    fine_tune_epochs: int = Field(0, ge=0)
    fine_tune_learning_rate: float = Field(1e-5, gt=0)
    fine_tune_blocks: int = Field(1, ge=1)
    fine_tune_on: Literal["cache", "images"] = "cache"
    dropout: float = Field(0.25, ge=0, lt=1)
    dense_layers: int | None = Field(None, ge=0)
    units: int | None = Field(None, ge=1)
    conv_layers: int | None = Field(None, ge=1)
    filters: int | None = Field(None, ge=1)
    stages: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    backbone: str | None = None
    weights: str = "imagenet"
    cache_features: bool = False
    multiscale: bool = False
    shift_views: int = Field(0, ge=0)
    shift_kind: Literal["acquisition", "appearance"] = "acquisition"
    exclude_source: str | None = None
    balance: Literal["class", "class_group", "source_class_sequence"] = "class"
    backbone_input: int | None = Field(None, ge=32)
    fine_tune_all: bool = False
    appearance_p: float = Field(0.0, ge=0, le=1)
    sampling: Literal["shuffle", "balanced"] = "shuffle"
    checkpoint: Literal["last", "check"] = "last"

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Recipe:
        missing = [k for k in FAMILY_KEYS[self.family] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"{self.family} entries need {', '.join(missing)}")
        transfer = self.family == "transfer"
        if self.backbone_input is not None and not transfer:
            raise ValueError("backbone_input applies to transfer entries only")
        if self.multiscale and not (transfer and self.cache_features and not self.fine_tune_epochs):
            raise ValueError("multiscale needs a transfer entry with cache_features and no fine_tune_epochs")
        on_cache = self.fine_tune_on == "cache" and self.cache_features and self.fine_tune_epochs > 0
        frozen_head = transfer and self.cache_features and not self.fine_tune_epochs
        if self.shift_views and not (on_cache or frozen_head):
            raise ValueError(
                "shift_views needs cache_features: a frozen head (no fine_tune_epochs), a multiscale head, or "
                "fine-tuning on the cache"
            )
        online = (self.appearance_p > 0, self.sampling != "shuffle")
        if any(online) and not self.fine_tune_all:
            raise ValueError("appearance_p and sampling apply to fine_tune_all entries only")
        if self.checkpoint != "last" and not (self.fine_tune_all or on_cache):
            raise ValueError("checkpoint applies to fine_tune_all entries and to fine-tuning on the cache")
        if self.fine_tune_all and not (transfer and self.fine_tune_epochs and self.fine_tune_on == "images"):
            raise ValueError("fine_tune_all needs a transfer entry with fine_tune_epochs and fine_tune_on = images")
        if self.balance != "class" and not (transfer and self.cache_features):
            raise ValueError(f"balance = {self.balance} needs a transfer entry with cache_features")
        return self

    @property
    def run_seed(self) -> int:
        """The seed of weight initialisation, shuffling and augmentation."""
        return self.seed if self.init_seed is None else self.init_seed

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> Recipe:
        """The recipe of a stored or expanded config dict (GridError, naming the key, if it breaks a rule)."""
        try:
            return cls.model_validate(cfg)
        except ValidationError as e:
            raise GridError(f"config {cfg.get('name', '?')!r}: {describe(e)}") from None

    def entry_name(self) -> str:
        """The run's name: family, shape and every recipe choice that makes it a different run."""
        parts: list[str] = [self.family]
        if self.family == "ann":
            parts += [f"d{self.dense_layers}", f"u{self.units}"]
        elif self.family == "cnn":
            parts += [f"c{self.conv_layers}", f"f{self.filters}", f"d{self.dense_layers}"]
        elif self.family == "resnet":
            parts += [f"st{self.stages}", f"w{self.width}"]
        else:
            parts += [str(self.backbone), f"d{self.dense_layers}", self._weights_label()]
            if self.backbone_input:
                parts.append(f"r{self.backbone_input}")
            if self.multiscale:
                parts.append("ms" + (f"-sh{self.shift_views}" if self.shift_views else ""))
            elif self.shift_views and not self.fine_tune_epochs:
                parts.append(f"sh{self.shift_views}")
            if self.fine_tune_epochs:
                blocks = str(self.fine_tune_blocks) if self.fine_tune_blocks > 1 else ""
                if self.fine_tune_all:
                    parts.append("ftall")
                else:
                    parts.append(("ftimg" if self.fine_tune_on == "images" else "ft") + blocks)
                if self.shift_views:
                    parts.append(f"sh{self.shift_views}")
        if self.shift_kind == "appearance":
            parts.append("app")
        if self.appearance_p:
            parts.append(f"app{round(100 * self.appearance_p)}")
        if self.sampling == "balanced":
            parts.append("bal3")
        if self.checkpoint == "check":
            parts.append("ckck")
        if self.balance == "class_group":
            parts.append("bal")
        if self.balance == "source_class_sequence":
            parts.append("bal3")
        if self.exclude_source:
            parts.append(held_out_tag(self.exclude_source))
        if self.init_seed is not None:
            parts.append(seed_tag(self.init_seed))
        if not self.augment:
            parts.append("noaug")
        if self.protocol != "official":
            parts.append(self.protocol)
        return "-".join(parts)

    def _weights_label(self) -> str:
        if self.weights in ("imagenet", "none"):
            return "scratch" if self.weights == "none" else "imagenet"
        return Path(self.weights).name.split(".")[0].replace(f"{self.backbone}_", "").replace("_notop", "")


def describe(e: ValidationError) -> str:
    """A pydantic error as `key: message; key: message` (the model's own rules have no key)."""
    out = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{key}: {msg}" if key else msg)
    return "; ".join(out)
