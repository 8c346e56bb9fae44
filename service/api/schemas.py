"""Response models: what the OpenAPI schema documents, with examples."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service import DISCLAIMER
from service.inference.manifest import PublicManifest

EXAMPLE_PROBS = {"glioma": 0.71, "meningioma": 0.2, "no_tumor": 0.04, "pituitary": 0.05}


class ModelPrediction(BaseModel):
    name: str = Field(description="Model name from the manifest.", examples=["cnn-c3-f32-d1"])
    label: str = Field(description="This model's arg-max class.", examples=["glioma"])
    probabilities: dict[str, float] = Field(
        description="This model's calibrated probabilities by class (softmax of logits / its temperature).",
        examples=[EXAMPLE_PROBS],
    )


class PredictResponse(BaseModel):
    label: str = Field(description="Majority vote of the models (tie: highest mean probability).", examples=["glioma"])
    prediction_set: list[str] | None = Field(
        description="The classes that together hold the true one with probability `prediction_set_level`, most "
        "probable first (split conformal prediction fitted on validation images; the guarantee holds only for "
        "images like those). The label is always in it. Null for ensembles without a conformal rule.",
        examples=[["glioma", "meningioma"]],
    )
    prediction_set_level: float | None = Field(
        description="The stated coverage of `prediction_set` (GET /v1/models → ensemble.conformal, ensemble.trust "
        "for what it was measured to be).",
        examples=[0.95],
    )
    probabilities: dict[str, float] = Field(
        description="Mean of the models' calibrated probabilities, by class; sums to 1.", examples=[EXAMPLE_PROBS]
    )
    votes: dict[str, int] = Field(
        description="How many models voted for each class.",
        examples=[{"glioma": 2, "meningioma": 1, "no_tumor": 0, "pituitary": 0}],
    )
    agreement: float = Field(description="Share of models that voted for `label`.", examples=[0.667])
    uncertain: bool = Field(
        description="True when the answer should not be relied on: the prediction set holds more than one class, "
        "or the image is unlike the training images, or it is probably not a brain MRI (`uncertainty_reasons`).",
        examples=[True],
    )
    uncertainty_reasons: list[str] = Field(
        description="Why it is uncertain (empty if not): several_classes_possible, unlike_training_images, "
        "probably_not_brain_mri. Ensembles without a conformal rule report models_disagree, low_top_probability "
        "or high_entropy instead of several_classes_possible.",
        examples=[["several_classes_possible"]],
    )
    warnings: list[str] = Field(
        description="Signs that the upload may not be a brain-MRI slice like the training images: "
        "not_grayscale, no_brain_outline, no_dark_background, unlike_training_images (empty if none). The "
        "prediction is meaningless for such images.",
        examples=[["not_grayscale", "unlike_training_images"]],
    )
    shift_score: float | None = Field(
        None,
        description="How unlike the validation images the upload is (mean over the models of ood_score / its "
        "validation median); above ensemble.shift.threshold it is flagged unlike_training_images.",
        examples=[1.12],
    )
    models: list[ModelPrediction] = Field(description="Each model's own prediction.")
    model_version: str = Field(description="Version of the ensemble (manifest).", examples=["20261126-231432-d441bf39"])
    elapsed_ms: float = Field(
        description="Server time for decode, crop, waiting for a batch, and inference.", examples=[41.3]
    )
    crop_fallback: bool = Field(description="True when no brain contour was found and the whole image was used.")
    input_png_base64: str | None = Field(
        None, description="The 150×150 crop the models saw (PNG, base64), when `include_input=true`."
    )
    disclaimer: str = Field(DISCLAIMER, examples=[DISCLAIMER])


class ErrorResponse(BaseModel):
    detail: Any = Field(description="What was wrong with the request.", examples=["The upload is empty (0 bytes)."])


class BatchItem(BaseModel):
    index: int = Field(description="Position of the file in the request (0-based).", examples=[0])
    filename: str | None = Field(None, description="The multipart part's file name, if it had one.")
    status: int = Field(description="The HTTP status this file alone would have got.", examples=[200])
    result: PredictResponse | None = Field(None, description="The prediction (status 200).")
    error: str | None = Field(None, description="Why this file was refused (status 4xx).")


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="One entry per file, in the order sent.")
    n_ok: int = Field(description="Files predicted.", examples=[3])
    n_failed: int = Field(description="Files refused (each with its own error).", examples=[0])
    model_version: str = Field(description="Version of the ensemble (manifest).")
    elapsed_ms: float = Field(description="Server time for the whole batch.", examples=[120.4])
    disclaimer: str = Field(DISCLAIMER, examples=[DISCLAIMER])


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    detail: str | None = None
    disclaimer: str = DISCLAIMER


class ModelsInfo(PublicManifest):
    disclaimer: str = Field(DISCLAIMER, examples=[DISCLAIMER])
