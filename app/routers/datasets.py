"""/v1/datasets: upload, list (built-in and uploaded), inspect and delete data sets."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.blobstore import blob_store
from app.datasets import (
    check_name,
    check_quota,
    dataset_to_read,
    delete_dataset,
    get_dataset,
    list_datasets,
    store_dataset,
    upload_limits,
)
from app.db import writer_bind
from app.deps import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep
from app.routers.common import problems
from app.schemas import ApiModel
from app.services import _decode_cursor
from app.upload_body import receive_upload
from app.uploads import invalid

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

DatasetId = Annotated[str, Path(max_length=64, description="The data set's id: the `id` "
                                "returned by `POST /v1/datasets` (also in its `Location`).")]


class DatasetRead(ApiModel):
    """An uploaded data set."""

    id: str = Field(description="The data set's id (use it in a spec's `data`).")
    source: Literal["uploaded"] = Field(description="Always `uploaded`.")
    name: str = Field(description="Display name.")
    task: Literal["classification", "regression"] = Field(description="What y holds.")
    format: Literal["csv", "npz", "npy"] = Field(description="What was uploaded.")
    n_samples: int = Field(description="Rows (examples).")
    n_features: int = Field(description="Input columns: the network's input width.")
    n_classes: int | None = Field(description="Classification: max label + 1.")
    n_targets: int = Field(description="Regression target columns (1 for classification).")
    dtype: str = Field(description="dtype of the uploaded inputs (stored as float64).")
    feature_names: list[str] | None = Field(description="CSV: the input columns' names "
                                                        "(null for .npz/.npy).")
    target_name: str | None = Field(description="CSV: the target column (null for .npz/.npy).")
    sha256: str = Field(description="SHA-256 of the uploaded bytes (an .npy pair: X's bytes "
                                    "then y's).")
    upload_bytes: int = Field(description="Bytes of the uploaded file(s).")
    stored_bytes: int = Field(description="Size of the stored normalised .npz (counts "
                                          "towards the tenant's upload quota).")
    created_at: datetime = Field(description="When it was uploaded (UTC, ISO 8601).")
    tenant: str | None = Field(None, description="The owning tenant; null for the admin's.")
    spec_data: dict[str, Any] = Field(description="What to put in a spec's `data`.")


class DatasetList(ApiModel):
    datasets: list[dict[str, Any]] = Field(
        description="The first page starts with the synthetic and built-in data sets "
                    "(`source` synthetic | builtin); then the caller's uploaded ones "
                    "(`source` uploaded, with `id`), newest first.")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page of "
                                                      "uploaded data sets; null at the end.")


_UPLOAD_DESCRIPTION = """\
Upload a data set, streamed to disk while its limits are checked:

* **CSV** with a header row; `target` names the target column (default: the last one);
  every other column is an input. Send it as `text/csv`, or as part `file` of
  multipart/form-data.
* **.npz** with arrays `X` (rows, columns) and `y`: `application/x-npz`, or part `file`.
* **.npy pair**: multipart parts `X` and `y`.

`task`: `classification` (y holds integer labels >= 0) or `regression` (finite numbers, one
or more columns). Every value must be a finite number, the table rectangular, with at least
2 rows. Parameters come from the query or from form fields of the same name. Limits:
GRADWATCH_MAX_UPLOAD_BYTES (413), GRADWATCH_MAX_UPLOAD_ROWS, _COLUMNS, _LINE_BYTES, _CLASSES
(422); a tenant's stored data sets are capped by GRADWATCH_TENANT_MAX_UPLOAD_BYTES (429).
Use it in a spec as `"data": {"source": "uploaded", "id": "<id>"}`.
"""


_BINARY = {"type": "string", "format": "binary"}
# The body is read as a stream by the handler (never parsed by FastAPI): documented here so
# that Swagger UI offers the upload and clients see every accepted form.
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {**_BINARY, "description": "A CSV (header row) or an .npz with X and y."},
        "X": {**_BINARY, "description": "An .npy pair: the inputs (rows, columns)."},
        "y": {**_BINARY, "description": "An .npy pair: the targets."},
        "name": {"type": "string", "maxLength": 200},
        "task": {"type": "string", "enum": ["classification", "regression"]},
        "target": {"type": "string", "maxLength": 200}}}},
    "text/csv": {"schema": {"type": "string"},
                 "example": "sepal,petal,species\n5.1,1.4,0\n6.2,4.5,1\n"},
    "application/x-npz": {"schema": _BINARY},
    "application/octet-stream": {"schema": _BINARY},
}}}


@router.post("", status_code=201, response_model=DatasetRead, operation_id="uploadDataset",
             summary="Upload a data set (CSV, .npz, or an .npy pair)",
             description=_UPLOAD_DESCRIPTION, responses=problems(413, 415, 422, 429),
             openapi_extra=UPLOAD_BODY)
async def upload_dataset(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(max_length=200, description="Display name.")] = None,
    task: Annotated[Literal["classification", "regression"] | None,
                    Query(description="Required (here or as a form field).")] = None,
    target: Annotated[str | None, Query(max_length=200, description="CSV target column.")
                      ] = None,
    format: Annotated[Literal["csv", "npz", "npy"] | None,
                      Query(description="For application/octet-stream bodies.")] = None,
) -> dict[str, Any]:
    if name is not None:
        check_name(name)  # before reading a byte
    state = request.app.state

    def writer() -> Session:
        session: Session = state.sessionmaker(bind=writer_bind(state.engine))
        return session

    def room_left() -> None:
        with state.sessionmaker() as session:
            check_quota(session, principal, settings, 1)

    await run_in_threadpool(room_left)
    store = blob_store(settings)
    with ExitStack() as stack:
        received = await receive_upload(
            request, limits=upload_limits(settings), format_param=format,
            stage=lambda: stack.enter_context(store.staging()))
        fields = received.fields
        task_value = _one("task", task, fields.get("task"))
        if task_value not in ("classification", "regression"):
            got = f" (got {task_value[:40]!r})" if task_value else ""
            raise invalid(f"task must be classification or regression{got}", "task")
        row = await run_in_threadpool(
            store_dataset, writer, store, stack, received=received, principal=principal,
            settings=settings, name=check_name(_one("name", name, fields.get("name"))
                                               or "untitled"),
            task=task_value, target=_one("target", target, fields.get("target")))
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return dataset_to_read(row)


def _one(key: str, query: str | None, form: str | None) -> str | None:
    if query is not None and form is not None and query != form:
        raise invalid(f"{key} is given twice, differently (query {query[:40]!r}, form field "
                      f"{form[:40]!r})", key)
    return query if query is not None else form


@router.get("", response_model=DatasetList, operation_id="listDatasets",
            summary="Built-in, synthetic and uploaded data sets",
            description="What `data.source` accepts: synthetic generators and built-in sets "
                        "(task, size, input width, classes, defaults), then the caller's "
                        "uploaded data sets, newest first, paged with `cursor`.",
            responses=problems(422))
def list_all(
    session: ReadSessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="The `next_cursor` of "
                                        "the previous page.")] = None,
) -> dict[str, Any]:
    from core.data import dataset_catalog

    after = _decode_cursor(cursor) if cursor else None
    rows, next_cursor = list_datasets(session, principal, limit=limit, after=after)
    catalog = dataset_catalog() if cursor is None else []
    return {"datasets": [*catalog, *(dataset_to_read(r) for r in rows)],
            "next_cursor": next_cursor}


@router.get("/{dataset_id}", response_model=DatasetRead, operation_id="getDataset",
            summary="An uploaded data set's metadata",
            description="Shape, task, classes, feature names, the SHA-256 of the uploaded "
                        "bytes and sizes; another tenant's data set is a 404.",
            responses=problems(404))
def get_one(dataset_id: DatasetId, session: ReadSessionDep,
            principal: PrincipalDep) -> dict[str, Any]:
    return dataset_to_read(get_dataset(session, dataset_id, principal))


@router.delete("/{dataset_id}", status_code=204, operation_id="deleteDataset",
               summary="Delete an uploaded data set",
               description="409 while a queued or running job trains on it. Finished jobs "
                           "keep their histories.", responses=problems(404, 409))
def delete_one(dataset_id: DatasetId, session: SessionDep, principal: PrincipalDep,
               settings: SettingsDep) -> Response:
    key = delete_dataset(session, dataset_id, principal)
    session.commit()
    blob_store(settings).delete(key)
    return Response(status_code=204)
