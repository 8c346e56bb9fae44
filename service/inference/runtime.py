"""The ONNX ensemble: load and verify the files the manifest names, run the models, vote.

Used by the service and by the trainer's export/evaluation, so both measure the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.image.plausibility import input_warnings
from service.image.preprocessing import to_model_input
from service.inference.confidence import apply_temperature, uncertainty_reasons
from service.inference.ensemble import majority_vote
from service.inference.manifest import Manifest, ManifestError, load_manifest, sha256_file
from service.inference.trust import (
    NOT_BRAIN_MRI,
    SEVERAL_CLASSES,
    UNLIKE_TRAINING,
    judge,
    prediction_sets,
    shift_scores,
)


class ModelLoadError(ManifestError):
    """A model file is missing, corrupt, or does not match the manifest."""


@dataclass
class Prediction:
    label: int
    mean: np.ndarray  # (classes,)
    votes: np.ndarray  # (classes,)
    per_model: np.ndarray  # (models, classes)
    uncertain: list[str]  # the models' reasons (no conformal rule: thresholds; else a set of several classes)
    ood_scores: list[float | None]  # per model; None for models without an ood_score output
    prediction_set: list[int] | None = None  # classes, most probable first (None: no conformal rule)
    shift_score: float | None = None  # None: no shift rule, or no model with an ood_score


@dataclass
class Assessment:
    """What an answer says about itself: input warnings, prediction set, and whether to trust it."""

    warnings: list[str]
    prediction_set: list[str] | None
    uncertain: bool
    reasons: list[str]


def _session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


class Ensemble:
    """The manifest's models, each run from its ONNX file. Several models may share one file (a merged
    graph computing their common layers once): their outputs are then named `<output_prefix><output>`."""

    def __init__(self, manifest: Manifest, sessions: list[ort.InferenceSession]) -> None:
        """`sessions`: one per distinct file, in the order the manifest's models first name them."""
        self.manifest = manifest
        self.sessions = sessions
        self.n_models = len(manifest.models)
        files = list(dict.fromkeys(m.file for m in manifest.models))
        if len(files) != len(sessions):
            raise ValueError(f"{len(files)} model files but {len(sessions)} sessions")
        self.session_of = [files.index(m.file) for m in manifest.models]  # model → index into sessions
        self.prefixes = [m.output_prefix for m in manifest.models]
        self.classes = manifest.classes
        self.input_name = manifest.input.name
        self.temperatures = [m.temperature for m in manifest.models]
        self.output_name = manifest.output.name
        available = [{o.name for o in s.get_outputs()} for s in sessions]
        # per model, its outputs without the prefix
        self.output_names = [
            {n[len(p) :] for n in available[i] if n.startswith(p)}
            for i, p in zip(self.session_of, self.prefixes, strict=True)
        ]
        self.ood_thresholds = [m.ood_threshold for m in manifest.models]
        self.background_threshold = manifest.ensemble.background_threshold

    @classmethod
    def load(cls, models_dir: Path, threads: int = 0, verify_sha256: bool = True) -> Ensemble:
        """Load every model file named in models_dir/manifest.json, checking hash, input and output shapes.

        Raises ModelLoadError / ManifestError naming the file and the reason.
        """
        manifest = load_manifest(models_dir)
        expected_in = manifest.input.shape[1:]
        sessions: dict[str, ort.InferenceSession] = {}
        for entry in manifest.models:
            path = models_dir / entry.file
            if entry.file not in sessions:
                sessions[entry.file] = cls._open(path, entry.name, entry.sha256, threads, verify_sha256)
                inputs = sessions[entry.file].get_inputs()
                if len(inputs) != 1 or inputs[0].name != manifest.input.name:
                    raise ModelLoadError(
                        f"{path}: expected one input named {manifest.input.name!r}, found {[i.name for i in inputs]}"
                    )
                if list(inputs[0].shape[1:]) != expected_in:
                    raise ModelLoadError(
                        f"{path}: input shape {inputs[0].shape} does not match the manifest's {manifest.input.shape}"
                    )
            elif verify_sha256 and entry.sha256 != next(m.sha256 for m in manifest.models if m.file == entry.file):
                raise ModelLoadError(f"{path}: the manifest gives two sha256 for this file (model {entry.name!r})")
            outputs = sessions[entry.file].get_outputs()
            wanted = entry.output_prefix + manifest.output.name
            out = next((o for o in outputs if o.name == wanted), None)
            if out is None:
                raise ModelLoadError(
                    f"{path}: no output named {wanted!r} for model {entry.name!r} (found {[o.name for o in outputs]})"
                )
            if out.shape[-1] != len(manifest.classes):
                raise ModelLoadError(
                    f"{path}: output {wanted!r} has {out.shape[-1]} classes, the manifest names {len(manifest.classes)}"
                )
        return cls(manifest, list(sessions.values()))

    @staticmethod
    def _open(path: Path, name: str, sha256: str, threads: int, verify_sha256: bool) -> ort.InferenceSession:
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file missing (named by the manifest for {name!r})")
        if verify_sha256:
            actual = sha256_file(path)
            if actual != sha256:
                raise ModelLoadError(
                    f"{path}: sha256 mismatch (manifest {sha256[:12]}…, file {actual[:12]}…); "
                    "the file is corrupt or was replaced"
                )
        try:
            return ort.InferenceSession(str(path), _session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises several private exception types
            raise ModelLoadError(f"{path}: not a loadable ONNX model ({e})") from e

    def run_outputs(self, batch: np.ndarray, wanted: list[list[str]]) -> list[list[np.ndarray]]:
        """Per model, its outputs named in wanted[model] (without prefix), from one run of each file."""
        requests: list[list[str]] = [[] for _ in self.sessions]
        for model, names in enumerate(wanted):
            requests[self.session_of[model]] += [self.prefixes[model] + n for n in names]
        results: dict[tuple[int, str], np.ndarray] = {}
        for i, (sess, names) in enumerate(zip(self.sessions, requests, strict=True)):
            if names:
                unique = list(dict.fromkeys(names))
                results.update(zip([(i, n) for n in unique], sess.run(unique, {self.input_name: batch}), strict=True))
        return [[results[(self.session_of[m], self.prefixes[m] + n)] for n in names] for m, names in enumerate(wanted)]

    def run_raw(self, batch: np.ndarray) -> np.ndarray:
        """float32 NHWC batch → the models' own probabilities (models, N, classes)."""
        return np.stack([o[0] for o in self.run_outputs(batch, [[self.output_name]] * self.n_models)])

    def run_with(self, batch: np.ndarray, extra: str) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Raw probabilities (models, N, classes) and, per model, the `extra` output (None where absent),
        from one run of each model file."""
        wanted = [[self.output_name, *([extra] if extra in names else [])] for names in self.output_names]
        outs = self.run_outputs(batch, wanted)
        return np.stack([o[0] for o in outs]), [np.asarray(o[1]) if len(o) > 1 else None for o in outs]

    def run_images_with(
        self, images: np.ndarray, extra: str, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """uint8 RGB (N, H, W, 3) → raw probabilities (models, N, classes) and, per model, its `extra`
        output for all N images (None where absent), in batches, one run of each model per batch."""
        parts = [
            self.run_with(to_model_input(images[i : i + batch_size]), extra) for i in range(0, len(images), batch_size)
        ]
        raw = np.concatenate([probs for probs, _ in parts], axis=1)
        per_model = zip(*(extras for _, extras in parts), strict=True)
        return raw, [None if part[0] is None else np.concatenate(part) for part in per_model]

    def calibrated(self, raw: np.ndarray) -> np.ndarray:
        return np.stack([apply_temperature(p, t) for p, t in zip(raw, self.temperatures, strict=True)])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 NHWC batch → calibrated probabilities (models, N, classes), each model's temperature applied."""
        return self.calibrated(self.run_raw(batch))

    def predict_images(self, images: np.ndarray, batch_size: int = 64, calibrated: bool = True) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) → probabilities (models, N, classes), in batches."""
        run = self.run if calibrated else self.run_raw
        parts = [run(to_model_input(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(parts, axis=1)

    def _predictions(self, raw: np.ndarray, ood: list[np.ndarray | None]) -> list[Prediction]:
        probs = self.calibrated(raw)  # (models, N, classes)
        labels, votes, mean = majority_vote(probs)
        info = self.manifest.ensemble
        sets: list[list[int]] | list[None] = [None] * len(labels)
        if info.conformal is not None:
            sets = prediction_sets(mean, labels, [info.conformal.thresholds[c] for c in self.classes])
            reasons = [[SEVERAL_CLASSES] if len(s) > 1 else [] for s in sets]
        else:
            reasons = uncertainty_reasons(votes, mean, labels, info.uncertainty)
        scores = shift_scores(ood, info.shift.reference) if info.shift is not None else None
        return [
            Prediction(
                int(labels[i]),
                mean[i],
                votes[i],
                probs[:, i, :],
                reasons[i],
                [None if o is None else float(o[i]) for o in ood],
                sets[i],
                None if scores is None else float(scores[i]),
            )
            for i in range(raw.shape[1])
        ]

    def assess(self, crop: np.ndarray, crop_fallback: bool, pred: Prediction) -> Assessment:
        """The input warnings, the prediction set (class names) and the `uncertain` verdict of one answer: with a
        conformal rule, true when the set holds several classes, the image is unlike the training images or it
        is probably not a brain MRI; without one (older ensembles), the thresholds' reasons and those two."""
        info = self.manifest.ensemble
        shift = info.shift
        warnings = input_warnings(
            crop,
            crop_fallback,
            pred.ood_scores,
            self.ood_thresholds,
            self.background_threshold,
            None if shift is None else (pred.shift_score, shift.threshold),
        )
        if pred.prediction_set is not None:
            reasons = judge(pred.prediction_set, warnings)
            named = [self.classes[c] for c in pred.prediction_set]
        else:
            extra = [r for r in judge([pred.label], warnings) if r in (UNLIKE_TRAINING, NOT_BRAIN_MRI)]
            reasons, named = [*pred.uncertain, *extra], None
        return Assessment(warnings, named, bool(reasons), reasons)

    def predict_batch(self, images: np.ndarray) -> list[Prediction]:
        """uint8 RGB (N, H, W, 3) → one Prediction per image, from one batched run of each model."""
        raw, ood = self.run_with(to_model_input(images), "ood_score")
        return self._predictions(raw, ood)

    def explain(self, image: np.ndarray) -> tuple[Prediction, list[tuple[str, np.ndarray]]]:
        """One uint8 RGB image → its Prediction (without OOD scores) and, for each model with a class_map
        output, (model name, its (h, w) map of the voted class)."""
        raw, maps = self.run_with(to_model_input(image), "class_map")
        pred = self._predictions(raw, [None] * self.n_models)[0]
        named = [
            (m.name, cm[0, :, :, pred.label])
            for m, cm in zip(self.manifest.models, maps, strict=True)
            if cm is not None
        ]
        return pred, named

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_batch(image[None])[0]

    def warmup(self) -> None:
        size = self.manifest.input.shape[1:]
        self.predict(np.zeros([int(d or 1) for d in size], np.uint8))
