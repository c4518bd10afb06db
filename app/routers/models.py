"""/v1/jobs/{id}/model and /v1/jobs/{id}/predict: a job's trained model out, predictions in.

The model file is core's (:mod:`core.model_io`), kept by the worker in the blob store
(:mod:`app.artifacts`). Predictions are ``core.load_model(file).predict(X)``, computed here
from the same file, so the API and an offline notebook give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import Field

from app.artifacts import Which, iter_blob, model_key, open_model, read_model, read_model_info
from app.blobstore import BlobStore, blob_store
from app.datasets import get_dataset, load_dataset_arrays
from app.deps import PrincipalDep, ReadSessionDep, SettingsDep
from app.errors import ConflictError, NotFoundError, SpecValidationError
from app.lifecycle import TERMINAL
from app.routers.common import json_body_of, problems
from app.schemas import ApiModel, JsonFloat
from app.services import get_job
from app.settings import Settings
from app.tenancy import Principal
from core.model_io import Model, ModelFileError

__all__ = ["ModelInfo", "Prediction", "router"]

router = APIRouter(prefix="/v1/jobs", tags=["models"])

WhichQuery = Annotated[Literal["final", "best"], Query(
    description="`final`: the parameters at the end of the run (default); `best`: those at "
                "the lowest validation loss (jobs with a validation split).")]
AllowNonFinite = Annotated[bool, Query(
    description="Serve a model whose parameters hold NaN/±Inf (an exploded run) instead of "
                "answering 409.")]


class ModelInfo(ApiModel):
    """What the model file holds."""

    which: Literal["final", "best"] = Field(description="`final` or `best` (by validation "
                                                        "loss).")
    task: Literal["classification", "regression"] = Field(description="The data's task.")
    loss: str = Field(description="The training loss: it defines the probabilities.")
    dtype: str = Field(description="The floating point type the network was trained in.")
    n_features: int = Field(description="Input columns a row of `X` must have.")
    n_outputs: int = Field(description="Columns of `probabilities` (classes), or of each "
                                       "regression prediction.")
    layer_sizes: list[int] = Field(description="Input width, hidden widths, output width.")
    standardized: bool = Field(description="Whether inputs are standardised with the "
                                           "training split's mean/std (done for you).")
    step: int | None = Field(None, description="Optimizer steps done when the parameters "
                                               "were taken.")
    epoch: int | None = Field(None, description="For `best`: the epoch of the lowest "
                                                "validation loss.")
    val_loss: JsonFloat | None = Field(None, description="For `best`: that validation loss.")
    stop_reason: str | None = Field(None, description="Why training stopped.")
    finite: bool = Field(description="False when a parameter holds NaN/±Inf.")
    non_finite: list[str] = Field(description="The parameters holding NaN/±Inf.")


class Prediction(ApiModel):
    """Predictions of a job's model for the rows of `X`."""

    job_id: str = Field(description="The job whose model answered.")
    predictions: list[int] | list[list[JsonFloat]] = Field(
        description="Classification: the predicted class of each row (highest probability). "
                    "Regression: each row's outputs, in the target's original scale.")
    probabilities: list[list[JsonFloat]] | None = Field(
        description="Classification with `cross_entropy` (softmax) or `binary_cross_entropy` "
                    "(`[1 - p, p]`): each row's class probabilities; null otherwise.")
    model: ModelInfo = Field(description="The model that answered.")


_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Rows to predict: `X` (or its synonym `inputs`) or `dataset_id`, raw "
                   "inputs as in the training data; standardisation (if the spec asked for it) is applied for "
                   "you. Every number finite; at most GRADWATCH_MAX_INLINE_VALUES values.",
    "properties": {name: {"type": "array", "minItems": 1, "description": text,
                          "items": {"type": "array", "items": {"type": "number"}}}
                   for name, text in (("X", "Inputs, one row per example."),
                                      ("inputs", "Synonym of `X`."))}
    | {"dataset_id": {"type": "string", "description": "Instead of `X`: predict every row of "
                      "an uploaded data set (`POST /v1/datasets`) you can see."}},
    "additionalProperties": False,
    "example": {"X": [[0.1, -0.4], [0.7, 0.2]]},
}
PREDICT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _BODY_SCHEMA}}}}


def _store(settings: SettingsDep) -> BlobStore:
    return blob_store(settings)


StoreDep = Annotated[BlobStore, Depends(_store)]


def _model_info(session: Any, store: BlobStore, job_id: str, principal: Principal,
                which: Which, allow_non_finite: bool) -> dict[str, Any]:
    """The job's model info; 404 while it has none, 409 when its weights are non-finite."""
    job = get_job(session, job_id, principal)
    if job.status not in TERMINAL:
        raise NotFoundError(f"job {job_id} is {job.status}: its model is kept when it "
                            "finishes", slug="model-not-ready", status_now=job.status)
    with _damaged_as_conflict(job_id, which):
        info = read_model_info(store, job_id, which)
    if info is None:
        why = ("it has no validation split (or no finite validation loss)" if which == "best"
               else "it ended before training started" if job.status != "succeeded"
               else "it was trained before models were kept")
        raise NotFoundError(f"job {job_id} has no {which} model: {why}", slug="model-not-found")
    if not info.get("finite", False) and not allow_non_finite:
        bad = info.get("non_finite") or []
        raise ConflictError(
            f"job {job_id}'s {which} model has non-finite weights ({', '.join(bad[:4])}"
            f"{', ...' if len(bad) > 4 else ''} hold NaN/Inf: the run exploded); pass "
            "allow_non_finite=true to get it anyway", slug="model-non-finite",
            non_finite=bad)
    return info


@contextmanager
def _damaged_as_conflict(job_id: str, which: str) -> Iterator[None]:
    try:
        yield
    except ModelFileError as exc:  # the stored file was damaged after the worker wrote it
        raise ConflictError(f"job {job_id}'s stored {which} model cannot be read ({exc}); "
                            "run the job again", slug="model-damaged") from None


@router.get(
    "/{job_id}/model",
    operation_id="getJobModel",
    summary="Download the trained model (.npz)",
    description=(
        "The job's trained network as a NumPy `.npz`: its parameters in the dtype it was "
        "trained in, batch-norm running statistics, the validated spec, the standardisation "
        "its data pipeline applied and a format version. Load it offline with NumPy only: "
        "`core.load_model(path).predict(X)`. Kept for every finished run that trained "
        "(succeeded, failed, cancelled); 404 while the job is queued or running. An exploded "
        "run's weights hold NaN/Inf: 409 unless `allow_non_finite=true`."),
    response_class=StreamingResponse,
    responses={200: {"description": "The model file.", "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}}, **problems(404, 409, 422)},
)
def download_model(job_id: str, session: ReadSessionDep, store: StoreDep,
                   principal: PrincipalDep, which: WhichQuery = "final",
                   allow_non_finite: AllowNonFinite = False) -> StreamingResponse:
    _model_info(session, store, job_id, principal, which, allow_non_finite)
    try:
        f = open_model(store, job_id, which)
    except FileNotFoundError:  # deleted meanwhile
        raise NotFoundError(f"job {job_id} has no {which} model", slug="model-not-found"
                            ) from None
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-{which}.npz"'}
    size = store.size(model_key(job_id, which))
    if size is not None:
        headers["Content-Length"] = str(size)
    return StreamingResponse(iter_blob(f), media_type="application/octet-stream",
                             headers=headers)


_PREDICT_BODY = json_body_of("a JSON object with `X` (rows of numbers) or `dataset_id`")


@router.post(
    "/{job_id}/predict",
    response_model=Prediction,
    operation_id="predictJob",
    summary="Predict with the job's model",
    description=(
        "Runs the job's model on the rows of `X` (raw inputs; the standardisation of training "
        "is applied for you) with core's own inference forward pass — the same numbers as "
        "`core.load_model(<the downloaded file>).predict(X)`. Classification answers the "
        "class of each row and its probabilities, regression the outputs. 422 for a wrong "
        "number of columns (naming expected and given), a non-finite or non-number value, "
        "or more than GRADWATCH_MAX_INLINE_VALUES values; 404/409 as for `GET .../model`."),
    responses=problems(404, 409, 413, 415, 422),
    openapi_extra=PREDICT_BODY,
)
def predict(job_id: str, body: Annotated[Any, Depends(_PREDICT_BODY)], session: ReadSessionDep,
            store: StoreDep, settings: SettingsDep, principal: PrincipalDep,
            which: WhichQuery = "final",
            allow_non_finite: AllowNonFinite = False) -> Response:
    rows: list[list[float]] | npt.NDArray[np.float64]
    if isinstance(body, dict) and "dataset_id" in body:
        name, rows = _dataset_rows(body, session, store, settings, principal)
    else:
        name, rows = _rows(body, settings)
    info = _model_info(session, store, job_id, principal, which, allow_non_finite)
    width = info["layer_sizes"][0]
    if len(rows[0]) != width:
        raise _invalid([name, 0], f"the model takes {width} input columns; got {len(rows[0])}",
                       expected=width, given=len(rows[0]))
    with _damaged_as_conflict(job_id, which):
        model = read_model(store, job_id, which)
    if model is None:
        raise NotFoundError(f"job {job_id} has no {which} model", slug="model-not-found")
    # NaN/Inf outputs of an exploded model as "NaN"/"Infinity" (model_dump_json's rule)
    return Response(_predict(job_id, model, rows).model_dump_json(),
                    media_type="application/json")


def _predict(job_id: str, model: Model, rows: list[list[float]] | npt.NDArray[np.float64]
             ) -> Prediction:
    out = model.predict(rows)
    info = {**model.info, "task": model.task, "loss": model.loss, "dtype": model.spec.dtype,
            "n_features": model.n_features, "n_outputs": model.n_outputs,
            "layer_sizes": model.spec.layer_sizes(), "standardized": model.x_mean is not None,
            "finite": model.finite, "non_finite": model.non_finite()}
    info = {k: v for k, v in info.items() if k in ModelInfo.model_fields}
    if model.task == "classification":
        labels = out.argmax(axis=1).tolist()
        probs = out.tolist() if model.has_probabilities else None
        return Prediction(job_id=job_id, predictions=labels, probabilities=probs,
                          model=ModelInfo(**info))
    return Prediction(job_id=job_id, predictions=out.tolist(), probabilities=None,
                      model=ModelInfo(**info))


def _invalid(loc: list[Any], msg: str, type_: str = "value_error", slug: str = "validation-error",
             **extra: Any) -> SpecValidationError:
    where = ".".join(str(p) for p in ["body", *loc])
    return SpecValidationError(f"{where}: {msg}", slug=slug,
                               errors=[{"loc": ["body", *loc], "msg": msg, "type": type_}],
                               **extra)


# The forms of a predict body: inline rows (`X` or `inputs`), or an uploaded data set's id.
_INPUT_FIELDS = ("X", "inputs")


def _dataset_rows(body: dict[str, Any], session: Any, store: BlobStore, settings: Settings,
                  principal: Principal) -> tuple[str, npt.NDArray[np.float64]]:
    """`{"dataset_id": ...}`: the inputs of a data set the caller can see (404 otherwise), at
    most GRADWATCH_MAX_INLINE_VALUES values (a bigger set: download the model, predict
    offline)."""
    unknown = [k for k in body if k != "dataset_id"]
    if unknown:
        raise _invalid([unknown[0]], "send either `dataset_id` or `X`, not both",
                       "extra_forbidden")
    dataset_id = body["dataset_id"]
    if not isinstance(dataset_id, str):
        raise _invalid(["dataset_id"], "must be a data set id (a string)", "string_type")
    row = get_dataset(session, dataset_id, principal)
    limit = settings.max_inline_values
    if row.n_samples * row.n_features > limit:
        raise _invalid(["dataset_id"], f"data set {dataset_id} holds "
                       f"{row.n_samples * row.n_features} input values, more than {limit} "
                       "(GRADWATCH_MAX_INLINE_VALUES): download the model and predict with "
                       "core.load_model", "limit_exceeded", slug="limit-exceeded", limit=limit)
    X, _ = load_dataset_arrays(session, store, dataset_id, principal)
    return "dataset_id", X


def _rows(body: Any, settings: Settings) -> tuple[str, list[list[float]]]:
    """The body's rows: counted against the inline limit and checked to be finite numbers in
    one pass, before anything else looks at them; rectangular, at least one."""
    if not isinstance(body, dict):
        raise _invalid([], "must be a JSON object with `X`", "model_type")
    names = [n for n in _INPUT_FIELDS if n in body]
    unknown = [k for k in body if k not in _INPUT_FIELDS]
    if unknown:
        raise _invalid([unknown[0]], "unknown field; send `X` (or `inputs`)", "extra_forbidden")
    if len(names) != 1:
        raise _invalid(["X"], "send exactly one of `X` and `inputs`", "missing")
    name = names[0]
    rows = body[name]
    if not isinstance(rows, list) or not rows:
        raise _invalid([name], "must be a non-empty list of rows (lists of numbers)",
                       "list_type")
    limit, count = settings.max_inline_values, 0
    width = len(rows[0]) if isinstance(rows[0], list) else -1
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise _invalid([name, i], "must be a list of numbers", "list_type")
        count += len(row)
        if count > limit:
            raise _invalid([name], f"X holds more than {limit} values "
                           "(GRADWATCH_MAX_INLINE_VALUES)", "limit_exceeded",
                           slug="limit-exceeded", limit=limit)
        if len(row) != width:
            raise _invalid([name, i], f"has {len(row)} values; row 0 has {width} (every row "
                           "needs the same number of columns)", "value_error")
        for j, value in enumerate(row):
            if type(value) is not float and type(value) is not int:
                raise _invalid([name, i, j], "must be a number", "float_type")
            if not _finite(value):
                raise _invalid([name, i, j], "must be a finite number (no NaN/Infinity)",
                               "finite_number")
    if width == 0:
        raise _invalid([name, 0], "a row needs at least one value", "too_short")
    return name, rows


def _finite(value: float | int) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False
