"""Settings from environment variables (prefix MRI_), e.g. MRI_MODELS_DIR=/models."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MRI_", env_file=None)

    models_dir: Path = Field(REPO_MODELS, description="Folder with manifest.json and the ONNX files.")
    host: str = Field("0.0.0.0", description="Bind address for `python -m service` (HOST also works).")
    port: int = Field(8000, description="Port for `python -m service` (PORT also works).")
    max_upload_bytes: int = Field(10 * 1024 * 1024, description="Largest request body accepted (413 above).")
    upload_drain_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Before a 413, read and drop up to this much of the rest of the body, so that clients which "
        "send everything before reading (urllib, many mobile stacks) get the 413 and not a connection reset.",
    )
    upload_drain_s: float = Field(10.0, ge=0, description="Time limit of that drain (seconds).")
    max_image_pixels: int = Field(40_000_000, description="Largest width×height decoded (422 above).")
    request_timeout_s: float = Field(
        30.0, description="Deadline per request, upload included: 408 if the body is late, 504 if the work is; 0 = off."
    )
    max_batch: int = Field(
        16, ge=1, description="Most requests run through the models as one batch (1 = one at a time)."
    )
    max_waiting: int = Field(
        64,
        ge=1,
        description="Most images admitted to wait for or run in the models at once; past it a model route answers "
        "503 with Retry-After at once. An admitted request waits about limit / throughput: on 2 cores, 64 images are "
        "under a second of work (docs/performance.md).",
    )
    retry_after_s: int = Field(1, ge=0, description="The Retry-After (seconds) of a 503 for overload.")
    shutdown_delay_s: float = Field(
        2.0,
        ge=0,
        description="On SIGTERM: first this long as a lame duck (/health/ready answers 503, everything else is served "
        "as usual) so that balancers stop sending and the connections already made are read; then the drain.",
    )
    drain_timeout_s: int = Field(
        20,
        ge=0,
        description="After the shutdown delay: stop accepting, finish the requests in flight for at most this long, "
        "then exit. Delay and drain fit in the 30 s grace period of docker-compose.yml and deploy/k8s, less the k8s "
        "preStop pause (5 s).",
    )
    max_files: int = Field(
        32, ge=1, description="Most images in one POST /v1/predict/batch (or /v2 infer) request (413 above)."
    )
    threads: int = Field(0, description="onnxruntime intra-op threads per model (0 = one per core).")
    malloc_arenas: int = Field(
        2,
        ge=0,
        description="glibc malloc arenas for `python -m service` (0 = glibc's default, 8 per core). Each thread that "
        "decodes an upload would otherwise get an arena of its own, and the process grows for hours "
        "(docs/performance.md#soak). A MALLOC_ARENA_MAX in the environment wins.",
    )
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins; none by default.")
    api_key: SecretStr | None = Field(None, description="If set, /v1/* and /v2 models require header X-API-Key.")
    admin_key: SecretStr | None = Field(
        None, description="If set, POST /v2/repository/models/{name}/load with header X-Admin-Key reloads models."
    )
    model_name: str = Field("mri-classifier", description="The ensemble's name on the /v2 (Open Inference) API.")
    verify_sha256: bool = Field(True, description="Check every model file against the manifest at start-up.")
    log_format: str = Field("json", description="'json' (one object per line) or 'text'.")
