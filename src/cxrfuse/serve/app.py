"""The HTTP API and web page of a served run (FastAPI).

* ``GET /``: the web page (one self-contained HTML file: no external script, style or font);
* ``GET /health``: liveness and the run served;
* ``GET /docs``, ``GET /redoc``: the API's pages (Swagger UI, ReDoc) from local copies: they
  load nothing from outside the server; ``GET /openapi.json``: the schema;
* ``GET /v1/model``: the model card;
* ``POST /v1/predict`` (multipart): ``images`` (PNG, JPEG or DICOM, sniffed from the bytes),
  ``views`` (one per image, optional), ``indication``, ``comparison``, ``report``,
  ``explain`` (overlays + attribution), ``draft`` (report draft).

Limits: the request body (``max_request_bytes``, refused with 413 before it is parsed; a body
not fully received within ``body_timeout_s`` is dropped with 408, so a client that sends its
headers and then trickles the body holds no memory past it), the number of images and text length, image pixels (checked from the header before decoding);
``max_concurrency`` requests at a time, further ones wait up to ``queue_timeout_s`` and then
get 503. Every client error is a JSON body ``{"error": "..."}`` naming the bad file or field;
nothing of a request's text or images is logged, and server errors answer without a traceback.
"""


import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxrfuse.inference import MAX_TEXT_CHARS, StudyImage
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import Verdict
from cxrfuse.serve.page import PAGE
from cxrfuse.serve.service import Service

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

log = logging.getLogger("cxrfuse.serve")
RUN_ENV = "CXRFUSE_SERVE_RUN"
DEVICE_ENV = "CXRFUSE_SERVE_DEVICE"
BACKEND_ENV = "CXRFUSE_SERVE_BACKEND"


@dataclass(frozen=True)
class Limits:
    """What one request may hold and how many run at once."""

    max_request_bytes: int = 64 * 1024 * 1024
    max_images: int = 8
    max_text_chars: int = MAX_TEXT_CHARS
    max_concurrency: int = 2
    queue_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    """Seconds from the first body read to the last byte of the request body (a whole upload at
    up to ~1 MB/s for the largest body)."""
    max_pending_bodies: int = 8
    """Request bodies read at once (each up to ``max_request_bytes``); more get 503 at once, so
    held uploads can pin at most ``max_pending_bodies x max_request_bytes`` of memory."""


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong, naming the file or field.")


class ViewOut(BaseModel):
    name: str
    format: str
    width: int
    height: int
    view: str
    view_source: str
    slot: int | None


class Overlay(BaseModel):
    image: str
    view: str
    label: str
    method: str
    probability: float
    shown: bool = Field(True, description="False: the map is empty or flat and not drawn")
    note: str | None = Field(None, description="Why the map is not shown")
    raw_max: float | None = Field(None, description="The map's maximum, before any scaling")
    scale: float | None = Field(None, description="The run-level colour scale it is drawn on")
    fit: str = "crop"
    caption: list[str] = Field(default_factory=list)
    png_base64: str


class DicomObject(BaseModel):
    kind: str = Field(description="sr (TID 1500 measurement report), draft (machine-draft SR) "
                      "or overlay (Grad-CAM secondary capture)")
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    dicom_base64: str = Field(description="The DICOM Part 10 file, base64")


class PredictAnswer(BaseModel):
    run: str
    labels: list[str]
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    threshold_method: str | None
    decisions: dict[str, bool]
    warnings: list[str]
    verdicts: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per label, the run's test-set verdicts (chance, trivial, constant, "
        "small_val); with chance or trivial the decision is no better than a trivial rule.")
    views: list[ViewOut]
    text_sections: list[str]
    attribution: dict[str, Any] | None
    overlays: list[Overlay] | None
    report_draft: dict[str, Any] | None
    dicom: list[DicomObject] | None = Field(
        None, description="With dicom=true: the study's DICOM objects (docs/dicom.md)")


class CardMetrics(BaseModel):
    """The run's test metrics on the model card: value and 95 % interval per headline metric,
    AUROC / F1 per label, the trivial baselines."""

    split: str
    n_boot: int | None
    headline: dict[str, dict[str, Any]]
    per_label: dict[str, dict[str, Any]]
    baselines: dict[str, Any]


class TrainingData(BaseModel):
    manifest: str | None
    n: dict[str, int]
    images: str | None
    synthetic_images: bool


class ModelCard(BaseModel):
    """``GET /v1/model``: what the served run is, how its thresholds were chosen, what it was
    trained on and how it did on its test split."""

    model_config = ConfigDict(extra="allow")  # fields a newer service adds pass through

    run: str
    kind: str
    task: str | None
    labels: list[str]
    output: str
    thresholds: dict[str, float]
    threshold_method: str | None
    threshold_split: str | None
    modalities: list[str]
    encoders: dict[str, dict[str, Any]]
    training_data: TrainingData
    test_metrics: CardMetrics | None
    trained: str | None
    seed: int | None
    cxrfuse_version: str
    served_on: str
    verdicts: list[Verdict]
    no_skill: dict[str, list[str]]
    warnings: list[str]
    backend: str


def _error(status: int, message: str) -> "JSONResponse":
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before anything parses it
    (by its Content-Length, or by counting the bytes as they arrive); one not complete within
    ``timeout`` seconds gets 408 and its bytes are dropped (uvicorn bounds neither: its
    ``timeout_keep_alive`` covers only idle connections between requests); while
    ``max_bodies`` bodies are being received a further one gets 503 at once (GET and HEAD
    requests, which carry none, are never refused here)."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float = 60.0, max_bodies: int = 8) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout
        self.max_bodies, self.reading = max_bodies, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(413, f"request body over the limit of {self.limit:,} bytes")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_large(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):  # no body read: never 503 here
            await self.app(scope, receive, send)
            return
        if self.reading >= self.max_bodies:
            busy = _error(503, f"{self.reading} uploads are being received; try again shortly")
            busy.headers["connection"] = "close"
            await busy(scope, receive, send)
            return
        self.reading += 1
        try:
            body = await self._read(scope, receive, send)
        finally:
            self.reading -= 1
        if body is None:
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once an answer (413, 408) was sent or the client left."""
        too_large = _error(413, f"request body over the limit of {self.limit:,} bytes")
        chunks, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                chunks.clear()
                log.warning("request body not complete after %g s (%d bytes); dropped",
                            self.timeout, size)  # fmt: skip
                slow = _error(408, f"request body not complete within {self.timeout:g} s "
                                   f"({size:,} bytes received); send the upload at once")  # fmt: skip
                slow.headers["connection"] = "close"
                await slow(scope, receive, send)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(scope, receive, send)
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def create_app(run_dir: str | os.PathLike[str] | None = None, *, device: str = "cpu",
               limits: Limits | None = None, service: Service | None = None,
               backend: str = "torch") -> "FastAPI":  # fmt: skip
    """The app serving one run (loaded once, here); ``run_dir`` defaults to $CXRFUSE_SERVE_RUN."""
    # FastAPI here, not at the top: `import cxrfuse.serve` (e.g. for Service) stays light (issue 22);
    # the routes below resolve their annotations in this scope (no `from __future__ import annotations`)
    from fastapi import File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi_offline import FastAPIOffline
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()
    if service is None:
        target = run_dir or os.environ.get(RUN_ENV)
        if not target:
            raise CxrfuseError(f"no run directory to serve (give one, or set {RUN_ENV})")
        service = Service(target, device=device, backend=backend)
    gate = asyncio.Semaphore(limits.max_concurrency)
    # /docs and /redoc from fastapi-offline's copies of Swagger UI and ReDoc (served under
    # /static-offline-docs): no CDN script, style or font; no online validator badge
    app = FastAPIOffline(title="cxrfuse", version=service.card["cxrfuse_version"],
                         description=f"Predictions of the cxrfuse run {service.card['run']}.",
                         swagger_ui_parameters={"validatorUrl": None})  # fmt: skip
    app.state.service, app.state.limits = service, limits
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes, timeout=limits.body_timeout_s,
                       max_bodies=limits.max_pending_bodies)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the run served."""
        return {"status": "ok", "run": service.card["run"]}

    @app.get("/v1/model", response_model=ModelCard)
    async def model() -> dict[str, Any]:
        """The model card: task, labels, thresholds and how they were chosen, encoders,
        training data (synthetic or not), test metrics with intervals, versions."""
        return service.card

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 413, 422, 503)}  # fmt: skip

    @app.post("/v1/predict", response_model=PredictAnswer, responses=errors)
    async def predict(
        images: Annotated[list[UploadFile] | None, File(
            description="The study's views: PNG, JPEG or DICOM (told apart by their bytes)")] = None,
        views: Annotated[list[str] | None, Form(
            description="View position of each image (PA, AP, LATERAL, ...)")] = None,
        indication: Annotated[str | None, Form(max_length=limits.max_text_chars)] = None,
        comparison: Annotated[str | None, Form(max_length=limits.max_text_chars)] = None,
        report: Annotated[str | None, Form(
            max_length=limits.max_text_chars,
            description="A full report with section headings (INDICATION:, FINDINGS:, ...)")] = None,
        explain: Annotated[bool, Form(description="Add Grad-CAM overlays and attribution")] = False,
        draft: Annotated[bool, Form(description="Add the draft report (when configured)")] = True,
        dicom: Annotated[bool, Form(description=(
            "Add the DICOM objects (base64 Part 10 files): the TID 1500 SR, the machine-draft SR "
            "when a draft is made, one secondary capture per Grad-CAM overlay (explain=true)"))
        ] = False,
    ) -> Any:
        """Probabilities, thresholds, decisions and warnings for one study (with ``explain``
        also overlays and attribution; a draft report when the run has a generator)."""
        files = images or []
        if len(files) > limits.max_images:
            return _error(413, f"{len(files)} images; at most {limits.max_images} per study")
        study = []
        for i, upload in enumerate(files):
            name = os.path.basename(upload.filename or "") or f"image {i + 1}"
            study.append(StudyImage(name, await upload.read()))
        view_list = [v or None for v in views] if views else None
        try:
            await asyncio.wait_for(gate.acquire(), timeout=limits.queue_timeout_s)
        except TimeoutError:
            return _error(503, "the server is busy; try again shortly")
        try:
            return await run_in_threadpool(
                service.analyse, study, report=report, indication=indication,
                comparison=comparison, views=view_list, explain=explain, draft=draft,
                dicom=dicom)
        except CxrfuseError as err:
            return _error(400, str(err))
        except Exception as err:  # the client gets no traceback; the log has it
            log.error("predict failed: %s: %s", type(err).__name__, err, exc_info=err)
            return _error(500, "internal error while predicting (the server log names it)")
        finally:
            gate.release()

    return app


def app_from_env() -> "FastAPI":
    """The app factory uvicorn workers call (run directory and device from the environment)."""
    return create_app(device=os.environ.get(DEVICE_ENV, "cpu"),
                      backend=os.environ.get(BACKEND_ENV, "torch"))  # fmt: skip
