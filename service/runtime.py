"""The ONNX ensemble: load and verify the files the manifest names, run the models, vote.

Used by the service and by the trainer's export/evaluation, so both measure the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.confidence import apply_temperature, uncertainty_reasons
from service.ensemble import majority_vote
from service.manifest import Manifest, ManifestError, load_manifest, sha256_file
from service.preprocessing import to_model_input


class ModelLoadError(ManifestError):
    """A model file is missing, corrupt, or does not match the manifest."""


@dataclass
class Prediction:
    label: int
    mean: np.ndarray  # (classes,)
    votes: np.ndarray  # (classes,)
    per_model: np.ndarray  # (models, classes)
    uncertain: list[str]  # reasons; empty when confident
    ood_scores: list[float | None]  # per model; None for models without an ood_score output


def _session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


class Ensemble:
    def __init__(self, manifest: Manifest, sessions: list[ort.InferenceSession]) -> None:
        self.manifest = manifest
        self.sessions = sessions
        self.classes = manifest.classes
        self.input_name = manifest.input.name
        self.temperatures = [m.temperature for m in manifest.models]
        self.output_name = manifest.output.name
        self.output_names = [{o.name for o in s.get_outputs()} for s in sessions]
        self.ood_thresholds = [m.ood_threshold for m in manifest.models]

    @classmethod
    def load(cls, models_dir: Path, threads: int = 0, verify_sha256: bool = True) -> Ensemble:
        """Load every model named in models_dir/manifest.json, checking hash, input and output shapes.

        Raises ModelLoadError / ManifestError naming the file and the reason.
        """
        manifest = load_manifest(models_dir)
        expected_in = manifest.input.shape[1:]
        sessions = []
        for entry in manifest.models:
            path = models_dir / entry.file
            if not path.is_file():
                raise ModelLoadError(f"{path}: model file missing (named by the manifest as {entry.name!r})")
            if verify_sha256:
                actual = sha256_file(path)
                if actual != entry.sha256:
                    raise ModelLoadError(
                        f"{path}: sha256 mismatch (manifest {entry.sha256[:12]}…, file {actual[:12]}…); "
                        "the file is corrupt or was replaced"
                    )
            try:
                sess = ort.InferenceSession(str(path), _session_options(threads), providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises several private exception types
                raise ModelLoadError(f"{path}: not a loadable ONNX model ({e})") from e
            inputs, outputs = sess.get_inputs(), sess.get_outputs()
            if len(inputs) != 1 or inputs[0].name != manifest.input.name:
                raise ModelLoadError(
                    f"{path}: expected one input named {manifest.input.name!r}, found {[i.name for i in inputs]}"
                )
            if list(inputs[0].shape[1:]) != expected_in:
                raise ModelLoadError(
                    f"{path}: input shape {inputs[0].shape} does not match the manifest's {manifest.input.shape}"
                )
            out = next((o for o in outputs if o.name == manifest.output.name), None)
            if out is None:
                raise ModelLoadError(
                    f"{path}: no output named {manifest.output.name!r} (found {[o.name for o in outputs]})"
                )
            if out.shape[-1] != len(manifest.classes):
                raise ModelLoadError(
                    f"{path}: output has {out.shape[-1]} classes, the manifest names {len(manifest.classes)}"
                )
            sessions.append(sess)
        return cls(manifest, sessions)

    def run_raw(self, batch: np.ndarray) -> np.ndarray:
        """float32 NHWC batch → the models' own probabilities (models, N, classes)."""
        return np.stack([s.run([self.output_name], {self.input_name: batch})[0] for s in self.sessions])

    def run_with(self, batch: np.ndarray, extra: str) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Raw probabilities (models, N, classes) and, per model, the `extra` output (None where absent),
        from one run of each model."""
        probs: list[np.ndarray] = []
        extras: list[np.ndarray | None] = []
        for s, names in zip(self.sessions, self.output_names, strict=True):
            if extra in names:
                p, e = s.run([self.output_name, extra], {self.input_name: batch})
                probs.append(p)
                extras.append(np.asarray(e))
            else:
                probs.append(s.run([self.output_name], {self.input_name: batch})[0])
                extras.append(None)
        return np.stack(probs), extras

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
        reasons = uncertainty_reasons(votes, mean, labels, self.manifest.ensemble.uncertainty)
        return [
            Prediction(
                int(labels[i]),
                mean[i],
                votes[i],
                probs[:, i, :],
                reasons[i],
                [None if o is None else float(o[i]) for o in ood],
            )
            for i in range(raw.shape[1])
        ]

    def predict_batch(self, images: np.ndarray) -> list[Prediction]:
        """uint8 RGB (N, H, W, 3) → one Prediction per image, from one batched run of each model."""
        raw, ood = self.run_with(to_model_input(images), "ood_score")
        return self._predictions(raw, ood)

    def explain(self, image: np.ndarray) -> tuple[Prediction, list[tuple[str, np.ndarray]]]:
        """One uint8 RGB image → its Prediction (without OOD scores) and, for each model with a class_map
        output, (model name, its (h, w) map of the voted class)."""
        raw, maps = self.run_with(to_model_input(image), "class_map")
        pred = self._predictions(raw, [None] * len(self.sessions))[0]
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
