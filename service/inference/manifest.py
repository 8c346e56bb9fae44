"""The ensemble manifest (models/manifest.json): the one place class names and model facts live."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.image.plausibility import FLAT_BACKDROP_SPREAD
from service.image.preprocessing import preprocessing_version
from service.inference.confidence import UncertaintyRule
from service.inference.trust import ConformalRule, ShiftRule

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 2
INTENDED_USE = (
    "Research and teaching: sorts a 2-D brain MRI slice into glioma, meningioma, pituitary tumour or no tumour. "
    "Not a medical device and not for clinical use; trained on public collections of 2-D slices (training.sources)."
)


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class Metrics(BaseModel):
    split: str = Field(description="Which images the numbers were measured on.")
    n: int
    accuracy: float
    macro_f1: float
    loss: float | None = None
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]] = Field(description="Rows: true class, columns: predicted class.")


class TensorSpec(BaseModel):
    name: str
    shape: list[int | None]
    dtype: str


class PublicModelEntry(BaseModel):
    name: str = Field(examples=["cnn-c3-f32-d1"])
    sha256: str
    family: str = Field(description="ann, cnn or transfer.", examples=["cnn"])
    weights_origin: str = Field(description="Where the weights the model started from came from.")
    params: int
    config: dict[str, Any] = Field(default_factory=dict, description="The grid entry it was trained from.")
    parity_max_abs_diff: float = Field(description="Max |Keras − ONNX| probability on real images at export.")
    weights_dtype: str = Field(
        "float32",
        description="How the ONNX file stores the large weight tensors: float32, or float16 cast back to float32 "
        "inside the graph (half the size; the operators still compute in float32).",
    )
    temperature: float = Field(
        1.0, gt=0, description="Calibration: the service reports softmax(logits / temperature), fitted on validation."
    )
    calibration: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="By split: this model's ECE (15 bins) before/after its temperature."
    )
    outputs: list[str] = Field(
        default_factory=lambda: ["probabilities"],
        description="ONNX outputs: probabilities; class_map (heatmaps) and ood_score for global-pooling models.",
    )
    ood_threshold: float | None = Field(
        None,
        description=(
            "ood_score above this (the largest among the training pool, validation included) flags an unfamiliar image."
        ),
    )
    metrics: dict[str, Metrics] = Field(default_factory=dict, description="By split: validation, official_test.")


class ModelEntry(PublicModelEntry):
    file: str
    output_prefix: str = Field(
        "", description="Prefix of this model's outputs in its file: m<i>/ when models share one merged file."
    )


class EnsembleInfo(BaseModel):
    vote: dict[str, str]
    metrics: dict[str, Metrics] = Field(default_factory=dict)
    uncertainty: UncertaintyRule = Field(
        default_factory=UncertaintyRule, description="When a prediction is flagged `uncertain`."
    )
    calibration: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="By split: expected calibration error (15 bins) of the mean probabilities before/after "
        "temperature scaling, and accuracy of the confident vs the uncertain predictions.",
    )
    merge: dict[str, float] = Field(
        default_factory=dict,
        description="When the models share one merged ONNX file: its nodes and weight tensors before/after "
        "de-duplication, and the largest |separate − merged| output difference measured at export.",
    )
    background_threshold: float | None = Field(
        default=None,
        ge=0,
        le=255,
        description="The `no_dark_background` warning fires when an upload's crop has a 10th grey-level "
        "percentile above this (the largest among the training images) and its darkest tenth is not a flat "
        f"grey backdrop (1st to 10th percentile within {FLAT_BACKDROP_SPREAD:g} grey levels); null: check off.",
    )
    compute_gmac: float | None = Field(
        default=None,
        ge=0,
        description="Billions of multiply-accumulates per upload (convolutions and matrix products of every ONNX "
        "file, batch 1; a backbone the merged file shares counted once), counted at export.",
    )
    conformal: ConformalRule | None = Field(
        default=None,
        description="Prediction sets with a stated coverage (split conformal, fitted on validation); null: answers "
        "carry no prediction set and `uncertain` follows the `uncertainty` thresholds.",
    )
    shift: ShiftRule | None = Field(
        default=None,
        description="The `unlike_training_images` check fitted on validation; null: each model's ood_threshold.",
    )
    trust: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="By split: coverage and mean size of the prediction sets, the share of answers flagged and "
        "how often the unflagged ones were right (overall and per voted class).",
    )
    sequence_groups: dict[str, GroupFigures] = Field(
        default_factory=dict,
        description="By split: accuracy per class × MRI sequence group (T1-, T1 with contrast- and T2/FLAIR-like) "
        "and the worst such group.",
    )
    cross_source: list[CrossSource] = Field(
        default_factory=list,
        description="Each data source scored by the ensemble's recipe trained without it (leave one source out).",
    )
    tie_broken: TieBrokenCheck | None = Field(
        default=None,
        description="The tie-broken check: held-out images where the MRI sequence does not give the class "
        "(TCGA-LGG gliomas and tumour-free slices of the same patients in FLAIR, T1 and T1 with contrast; Br35H "
        "tumours of mixed sequences), per class × sequence; null: not measured.",
    )


class GroupCell(BaseModel):
    n: int
    accuracy: float | None = Field(description="Share of the cell's images the vote got right (null: no images).")


class GroupFigures(BaseModel):
    """Accuracy of the vote by class × MRI sequence group (trainer.evaluation.sequence), on one split."""

    split: str = Field(description="Which images the numbers were measured on.")
    cells: dict[str, dict[str, GroupCell]] = Field(description="class → sequence group → cell.")
    by_group: dict[str, GroupCell] = Field(description="sequence group → all classes together.")
    worst: dict[str, Any] = Field(
        default_factory=dict,
        description="The class × group cell with the lowest accuracy among those with at least min_n images.",
    )
    min_n: int = 10


class CrossSource(BaseModel):
    """A source's images scored by a model trained without that source (or by an ensemble that never saw it)."""

    source: str
    model: str = Field(description="The model (or ensemble) that never saw the source.")
    n: int
    accuracy: float
    per_class: dict[str, GroupCell] = Field(default_factory=dict)
    by_group: dict[str, GroupCell] = Field(default_factory=dict, description="By MRI sequence group.")


class CheckedSource(BaseModel):
    """One source of the tie-broken check."""

    source: str
    n: int
    accuracy: float | None = None
    cells: dict[str, dict[str, GroupCell]] = Field(
        default_factory=dict, description="class → the sequence the source gives (FLAIR, T1, T1C…) → cell."
    )
    partial_n: int | None = Field(None, description="Images labelled only 'a tumour' (type not given).")
    answered_tumour: float | None = Field(None, description="Share of those answered as one of the tumour classes.")


class TieBrokenCheck(BaseModel):
    """The vote on images where sequence does not give the class (trainer.data.tiebroken)."""

    split: str = Field(description="Which images: the `val` rows of the data roots that list a split.")
    n: int
    sources: list[CheckedSource] = Field(default_factory=list)
    worst: dict[str, Any] = Field(
        default_factory=dict, description="The class × sequence cell with the lowest accuracy (at least min_n images)."
    )
    min_n: int = 10


class ChangelogEntry(BaseModel):
    model_version: str
    date: str = Field(description="ISO date the ensemble was exported.")
    change: str = Field(description="What changed against the ensemble before it, in one line.")


class SourceInfo(BaseModel):
    name: str = Field(description="The source as trainer records it per image.")
    root: str = Field(description="The data root (folder name) its images were read from.")
    images: int = Field(description="Its images in the prepared data (training, validation and test sides).")
    per_class: dict[str, int] = Field(default_factory=dict)
    licence: str = ""
    citation: str = ""


class TrainingInfo(BaseModel):
    grids: list[str] = Field(
        default_factory=list, description="Grid files (trainer/grids) whose entries the models were trained from."
    )
    protocol: str = Field(
        "official",
        description="official (Training/Testing folders), clean (official without training images near a Testing "
        "image) or pooled (80/20).",
    )
    validation: str = Field("", description="The validation split every choice was made on.")
    selection: str = Field("", description="How the models were chosen, and where the written rule is.")
    sources: list[SourceInfo] = Field(
        default_factory=list, description="Every data root and source the models learned from, with its licence."
    )

    @property
    def share_alike(self) -> list[str]:
        """The share-alike licences among the sources: what is derived from such data, the weights too, is shared
        under the same licence."""
        return sorted({s.licence for s in self.sources if "BY-SA" in s.licence})


class PublicManifest(BaseModel):
    """What GET /v1/models shows: the manifest without file paths."""

    model_config = ConfigDict(protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    model_version: str
    created: str
    trainer_version: str
    data_hash: str
    limit_per_class: int | None = Field(None, description="Set when trained on a subset (smoke runs).")
    intended_use: str = Field(INTENDED_USE, description="What the models are for, and what not.")
    training: TrainingInfo = Field(default_factory=TrainingInfo, description="Where the models came from.")
    changelog: list[ChangelogEntry] = Field(
        default_factory=list, description="Shipped ensembles, newest first (this one included)."
    )
    classes: list[str] = Field(min_length=2, description="Class names in output order: the only list of them.")
    class_words: dict[str, str] = Field(
        default_factory=dict,
        description="How each class reads in plain words (the page and the model card); missing ones are derived "
        "from the name.",
    )
    input: TensorSpec
    output: TensorSpec
    preprocessing: dict[str, Any] = Field(
        description="How an image becomes the models' input (service/image/preprocessing.py implements each version "
        "exactly; a manifest asking for anything else is refused at start-up)."
    )
    models: list[PublicModelEntry] = Field(min_length=1)
    ensemble: EnsembleInfo

    @model_validator(mode="before")
    @classmethod
    def _schema_1(cls, data: Any) -> Any:
        """Schema 1 kept its provenance in free-text `notes`: it becomes `training.selection`."""
        if isinstance(data, dict) and "notes" in data:
            data = dict(data)
            notes = data.pop("notes")
            training = dict(data.get("training") or {})
            training.setdefault("selection", notes)
            data["training"] = training
        return data

    @model_validator(mode="after")
    def _words_for_every_class(self) -> PublicManifest:
        """Plain words for each class: the manifest's own, else the name read aloud (no_tumor → no tumour)."""
        for c in self.classes:
            self.class_words.setdefault(c, c.replace("_", " ").replace("tumor", "tumour"))
        return self

    @field_validator("preprocessing")
    @classmethod
    def _implemented(cls, v: dict[str, Any]) -> dict[str, Any]:
        preprocessing_version(v)
        return v


class Manifest(PublicManifest):
    models: list[ModelEntry] = Field(min_length=1)  # type: ignore[assignment]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(models_dir: Path) -> Manifest:
    path = models_dir / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: manifest not found") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable manifest ({e})") from e
    try:
        return Manifest.model_validate(raw)
    except ValueError as e:
        raise ManifestError(f"{path}: invalid manifest ({e})") from e


def write_manifest(manifest: Manifest, models_dir: Path) -> Path:
    path = models_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(), indent=2) + "\n")
    return path


class ManifestError(RuntimeError):
    """The manifest or a model file it names is missing, corrupt or inconsistent."""
