"""POST /v1/explain: where the models with a class map looked, as a PNG overlay on the crop."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service import DISCLAIMER
from service.api.deps import ready_ensemble, require_api_key
from service.api.routes.predict import ERRORS, FRAME_QUERY, UPLOAD_DOC, read_crop
from service.api.schemas import ErrorResponse
from service.image.preprocessing import CropResult
from service.inference.heatmap import combine, overlay_png, peak
from service.inference.runtime import Ensemble

router = APIRouter(prefix="/v1", tags=["prediction"], dependencies=[Depends(require_api_key)])

SCALE = 2


def explain_crop(ensemble: Ensemble, crop: CropResult) -> tuple[bytes, dict[str, str]]:
    pred, maps = ensemble.explain(crop.image)
    if not maps:
        raise HTTPException(501, "No model of the loaded ensemble exports a class map (class_map output).")
    heat = combine([m for _, m in maps], crop.image.shape[0])
    x, y = peak(heat)
    headers = {
        "X-Label": ensemble.classes[pred.label],
        "X-Heatmap-Models": ",".join(name for name, _ in maps),
        "X-Heatmap-Peak": f"{x:.3f},{y:.3f}",
        "X-Uncertain": "true" if pred.uncertain else "false",
        "X-Disclaimer": DISCLAIMER,
    }
    return overlay_png(crop.image, heat, SCALE), headers


@router.post(
    "/explain",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "The 150×150 crop (shown 300×300) with a heat overlay: red where the models' class map "
            "for the voted label is highest. Headers: X-Label (the ensemble's vote), X-Heatmap-Models (models "
            "that contributed a map), X-Heatmap-Peak (x,y of the hottest point, 0–1 of width/height), "
            "X-Uncertain, X-Disclaimer.",
        },
        501: {"model": ErrorResponse, "description": "No model in the ensemble exports a class map."},
        **ERRORS,
    },
    openapi_extra=UPLOAD_DOC,
    summary="Heatmap: where the models looked",
    description="Same upload rules as /v1/predict. For each model with a global-pooling head, its own head is "
    "applied at every location of its last convolutional feature map (a class activation map computed by the "
    "ONNX graph, no gradients); the maps of the voted class are averaged and drawn over the crop. "
    "A heatmap shows what drove the output, not where a tumour is. Research tool, not for clinical use.",
)
async def explain(
    request: Request, frame: int | None = FRAME_QUERY, ensemble: Ensemble = Depends(ready_ensemble)
) -> Response:
    crop = await read_crop(request, frame, ensemble)
    png, headers = await run_in_threadpool(explain_crop, ensemble, crop)
    return Response(png, media_type="image/png", headers=headers)
