"""The HTTP application and its server: KServe's V1 and V2 data plane, pvtkit's upload route and page, limits,
metrics, structured logs and a graceful stop.

KServe's `ModelServer` is not used as a whole: it binds every interface (`0.0.0.0`) whatever it is asked, and on
SIGTERM it unloads the models while requests are still in flight. pvtkit mounts KServe's own data plane and
endpoint tables (the same V1/V2 routes, request decoding, binary-data extension and error types) on a FastAPI app
of its own, served by a `uvicorn.Server` that stops accepting on SIGTERM, lets every accepted request finish, then
exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import REGISTRY, exposition
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..pipelines import describe_error
from ._kserve import DataPlane, ModelRepositoryExtension, kserve, register_v1_endpoints, register_v2_endpoints
from .batching import DeadlineExceeded, Overloaded
from .metrics import ERROR_KINDS, METRICS
from .model import ImageModel

logger = logging.getLogger("pvtkit.serve")
errors = kserve.errors

# Route templates for metric labels (bounded: never a raw path).
_ROUTES = [
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "/v2/models/{name}/infer"),
    (re.compile(r"^/v1/models/[^/]+:predict$"), "/v1/models/{name}:predict"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$"), "/v2/models/{name}/ready"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?$"), "/v2/models/{name}"),
    (re.compile(r"^/v1/models/[^/]+$"), "/v1/models/{name}"),
]
_PLAIN_ROUTES = {
    "/",
    "/predict",
    "/metrics",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v1/models",
    "/v2/models",
    "/models",
}


def route_of(path: str) -> str:
    if path in _PLAIN_ROUTES:
        return path
    return next((name for pattern, name in _ROUTES if pattern.match(path)), "other")


def not_ready(models: Any) -> str | None:
    """Why the server is not ready (a model whose warm-up failed, or one still loading), or None when it is."""
    failed = [f"{m.name} ({m.warm_up_error})" for m in models if m.warm_up_error]
    if failed:
        return f"warm-up failed: {', '.join(failed)}"
    waiting = [m.name for m in models if not m.ready]
    return f"loading or warming up: {', '.join(waiting)}" if waiting else None


class _DataPlane(DataPlane):
    """KServe's data plane, with a request it cannot parse (a missing key, a bad binary header) answered 400."""

    def decode(self, body: Any, headers: Any, *args: Any, **kwargs: Any) -> Any:
        kind = (headers or {}).get("content-type", "")
        if kind.split(";")[0].strip().lower() in ("application/json", "application/x-www-form-urlencoded", ""):
            headers = {**headers, "content-type": "application/json"}  # `; charset=utf-8`, `curl -d`: still JSON
        try:
            return super().decode(body, headers, *args, **kwargs)
        except errors.InvalidInput:
            raise
        except Exception as e:  # KeyError, TypeError, ValueError, IndexError from a malformed request
            raise errors.InvalidInput(f"malformed inference request: {type(e).__name__}: {describe_error(e)}") from e

    async def ready(self) -> bool:
        """Ready once every model is loaded and warmed up (KServe's own answers True at once)."""
        return not_ready(self.model_registry.get_models().values()) is None

    def decode_inference_request(self, body: Any, headers: Any, model_name: str) -> Any:
        if isinstance(body, bytes):
            return binary_infer_request(body, headers, model_name)
        return super().decode_inference_request(body, headers, model_name)


def binary_infer_request(body: bytes, headers: dict[str, str], model_name: str) -> Any:
    """A V2 request body as bytes: JSON, or with the binary-data extension a JSON header then each input's raw bytes
    (kept raw). (KServe 0.21's own reader re-encodes BYTES inputs as UTF-8 text, which fails on encoded images.)"""
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    length = headers.get("inference-header-content-length", str(len(body)))  # none: all of it is JSON (Triton's rule)
    if not body:
        raise errors.InvalidInput("empty request body; expected a V2 inference request (JSON)")
    try:
        size = int(length)
        if not 0 < size <= len(body):
            raise ValueError
        header = json.loads(body[:size])
    except ValueError:
        raise errors.InvalidInput(
            f"Inference-Header-Content-Length {length!r}: not the size of a JSON object at the "
            f"start of the {len(body)}-byte body"
        ) from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise errors.InvalidInput('a V2 request is a JSON object with an "inputs" list')
    if header.get("parameters") is not None and not isinstance(header["parameters"], dict):
        raise errors.InvalidInput('"parameters": expected an object')
    start, inputs = size, []
    for i, spec in enumerate(header["inputs"]):
        if (
            not isinstance(spec, dict)
            or not {"name", "shape", "datatype"} <= spec.keys()
            or not isinstance(spec.get("parameters") or {}, dict)
        ):
            raise errors.InvalidInput(f"inputs[{i}]: expected an object with name, shape and datatype")
        tensor = InferInput(spec["name"], spec["shape"], spec["datatype"], parameters=spec.get("parameters"))
        binary = (spec.get("parameters") or {}).get("binary_data_size")
        if binary is not None:
            if not isinstance(binary, int) or binary < 0 or start + binary > len(body):
                raise errors.InvalidInput(
                    f"input {spec['name']!r}: binary_data_size {binary!r} runs past the end of "
                    f"the {len(body)}-byte body"
                )
            tensor._raw_data = body[start : start + binary]
            start += binary
        elif "data" in spec:
            tensor.data = spec["data"]
        else:
            raise errors.InvalidInput(f"input {spec['name']!r} has neither data nor binary_data_size")
        inputs.append(tensor)
    if start != len(body):
        raise errors.InvalidInput(f"the body has {len(body) - start} bytes after the inputs' binary data")
    outputs = header.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and "name" in o and isinstance(o.get("parameters") or {}, dict) for o in outputs
        ):
            raise errors.InvalidInput('"outputs": expected a list of objects with a name (and object parameters)')
        requested = [RequestedOutput(o["name"], o.get("parameters")) for o in outputs]
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=header.get("id"),
        parameters=header.get("parameters"),
        request_outputs=requested,
    )


class Limits:
    """The ASGI layer around the app: body size limit (413), request ids, counts, latency, one log line each."""

    def __init__(self, app: Any, max_body_bytes: int, stats: dict[str, int]) -> None:
        self.app, self.max_body_bytes, self.stats = app, max_body_bytes, stats

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        route = route_of(scope["path"])
        started = time.monotonic()
        status = {"code": 500, "sent": False}
        self.stats["accepted"] += 1
        limit = self.max_body_bytes
        received = 0

        async def too_large() -> None:
            body = json.dumps({"error": f"request body over the {limit / 2**20:g} MiB limit (--max-body-mb)"})
            await tracked_send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            status["refused"] = True

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a body with no (or a false) Content-Length: refuse it as it arrives
                    if not status["sent"]:
                        await too_large()
                    return {"type": "http.disconnect"}  # the app stops reading; what it sends is dropped
            return message

        async def tracked_send(message: dict) -> None:
            if status.get("refused"):
                return
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                await too_large()
            else:
                try:
                    await self.app(scope, counted_receive, tracked_send)
                except Exception:
                    if not status.get("refused"):  # after a 413 the app's complaint about its cut body is moot
                        raise
        finally:
            self.stats["answered"] += 1
            code = status["code"]
            elapsed = time.monotonic() - started
            METRICS.requests.labels(route, str(code)).inc()
            METRICS.latency.labels(route).observe(elapsed)
            if code >= 400:
                METRICS.errors.labels(ERROR_KINDS.get(code, "other")).inc()
            if route not in ("/metrics", "/v2/health/live", "/v2/health/ready"):
                logger.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": code,
                            "ms": round(elapsed * 1000, 2),
                        }
                    },
                )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def bad_input(_: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def validation(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return _error(400, f"malformed request body: {problems}")

    async def not_found(_: Request, exc: Exception) -> Response:
        return _error(404, str(exc))

    async def unavailable(_: Request, exc: Exception) -> Response:
        return _error(503, str(exc))

    async def overloaded(_: Request, exc: Overloaded) -> Response:
        return _error(503, str(exc), {"Retry-After": str(int(max(1, round(exc.retry_after_s))))})

    async def deadline(_: Request, exc: Exception) -> Response:
        return _error(504, str(exc))

    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:  # no such route, wrong method
        return _error(exc.status_code, f"{exc.detail}: see GET / for the page, /v2/models for the models")

    async def not_implemented(_: Request, exc: Exception) -> Response:
        return _error(501, str(exc))

    async def internal(_: Request, exc: Exception) -> Response:
        logger.error("internal error: %s", describe_error(exc), exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__}: {describe_error(exc)}")

    for kind, handler in [
        (errors.InvalidInput, bad_input),
        (RequestValidationError, validation),
        (errors.ModelNotFound, not_found),
        (errors.ModelNotReady, unavailable),
        (errors.ServerNotReady, unavailable),
        (errors.ServerNotLive, unavailable),
        (Overloaded, overloaded),
        (DeadlineExceeded, deadline),
        (StarletteHTTPException, http_error),
        (NotImplementedError, not_implemented),
        (errors.UnsupportedProtocol, not_implemented),
        (Exception, internal),
    ]:
        app.add_exception_handler(kind, handler)


async def start_grpc(dataplane: DataPlane, repository: Any, address: str) -> Any:
    """KServe's V2 gRPC service (its servicer and interceptors) on `address` (host:port), in this event loop."""
    from grpc import StatusCode, aio
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer

    class Errors(ExceptionToStatusInterceptor):
        """KServe's exception -> status mapping, plus the batcher's two refusals."""

        async def handle_exception(self, ex: Exception, request: Any, context: Any, method_name: str) -> None:
            if isinstance(ex, Overloaded):
                await context.abort(StatusCode.RESOURCE_EXHAUSTED, str(ex))
            elif isinstance(ex, DeadlineExceeded):
                await context.abort(StatusCode.DEADLINE_EXCEEDED, str(ex))
            elif isinstance(ex, errors.InvalidInput):
                await context.abort(StatusCode.INVALID_ARGUMENT, str(ex))
            else:
                await super().handle_exception(ex, request, context, method_name)

    server = aio.server(
        interceptors=(Errors(),),
        options=[("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, ModelRepositoryExtension(model_registry=repository)), server
    )
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    logger.info("gRPC listening", extra={"fields": {"address": address}})
    return server


def build_app(
    models: Sequence[ImageModel], max_body_mb: float = 20.0, grpc_address: str | None = None, grace_s: float = 30.0
) -> Any:
    """The ASGI app serving `models` (loaded; `warm_up` runs at startup, in a thread, and makes each ready), and
    with `grpc_address` (host:port) the V2 gRPC service beside it, stopped with the same grace."""
    if not models:
        raise ValueError("build_app needs at least one model")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ, got {names}; name them with --model NAME=SOURCE")
    repository = kserve.ModelRepository()
    for model in models:
        repository.update(model)
    dataplane = _DataPlane(model_registry=repository)
    stats = {"accepted": 0, "answered": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        for model in models:
            model.batcher.start()

        # Warm up off the event loop: liveness answers meanwhile, readiness only once every model is warm.
        async def warm(model: ImageModel) -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, model.warm_up)
            except Exception as e:  # the model stays unready; say why
                model.warm_up_error = describe_error(e)
                logger.error("warm-up of %s failed: %s", model.name, model.warm_up_error, exc_info=e)

        warming_task = asyncio.gather(*(warm(m) for m in models))
        grpc_server = await start_grpc(dataplane, repository, grpc_address) if grpc_address else None
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=grace_s)  # refuses new calls, lets those in flight finish
            await warming_task
            for model in models:
                await model.batcher.drain()
                await model.batcher.close()
                model.stop()
            logger.info("stopped", extra={"fields": dict(stats)})

    app = FastAPI(
        title="pvtkit",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.models, app.state.stats = {m.name: m for m in models}, stats

    def model_named(name: str | None) -> ImageModel:
        if name is None:
            return models[0]
        if name not in app.state.models:
            raise errors.ModelNotFound(name)
        return app.state.models[name]

    # pvtkit's routes first: Starlette takes the first match, so `/` is the page, not KServe's liveness answer.
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("pvtkit.serving").joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        reason = not_ready(models)
        if reason is not None:
            raise errors.ServerNotReady(reason)
        return {"ready": True}

    # KServe's repository extension (load / unload by anyone who can reach the port) is not served: an unloaded
    # model could not come back, since the models are given at start. Registered first, so it shadows KServe's.
    @app.api_route("/v2/repository/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def repository(rest: str) -> Any:
        raise StarletteHTTPException(404, "Not Found (the model repository extension is not served)")

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        encoder, content_type = exposition.choose_encoder(request.headers.get("accept"))
        return Response(content=encoder(REGISTRY), headers={"content-type": content_type})

    @app.get("/models")
    async def model_list() -> Any:
        """What the page shows: each model's name, task and readiness."""
        return [
            {
                "name": m.name,
                "task": m.task.pipeline_task if m.task else "",
                "ready": m.ready,
                "labels": len(m.labels),
                "overlay": bool(m.task and m.task.draws_overlay),
            }
            for m in models
        ]

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        """An image upload (multipart form, or the raw bytes with an image content type) -> the same JSON record as
        `pvtkit classify --format json` (or `pvtkit segment`; a depth model: statistics and a 16-bit PNG): one object
        per image, a list for several files."""
        query = request.query_params
        model = model_named(query.get("model"))
        if not model.ready:
            raise errors.ModelNotReady(model.name)
        images = await _uploaded_images(request)
        job = await model.run_images(images, top_k=query.get("top_k"))
        overlay = query.get("overlay", "").lower() in ("1", "true", "yes") and model.task.draws_overlay

        def records() -> list[dict[str, Any]]:
            out = []
            for i, (name, data) in enumerate(images):
                record = model.task.upload_record(name, model.record(job, i), job.answers[i])
                if overlay:
                    record["overlay"] = _overlay_data_url(model, job, i, data)
                out.append(record)
            return out

        if overlay or model.task.answer_off_loop:  # drawing and encoding maps are real work: off the event loop
            out = await asyncio.get_running_loop().run_in_executor(model.decoder, records)
        else:
            out = records()
        return out[0] if len(out) == 1 else out

    register_v1_endpoints(app, dataplane, ModelRepositoryExtension(model_registry=repository))
    register_v2_endpoints(app, dataplane, ModelRepositoryExtension(model_registry=repository))
    _install_error_handlers(app)
    return Limits(app, int(max_body_mb * 2**20), stats)


async def _uploaded_images(request: Request) -> list[tuple[str, bytes]]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form()
        except Exception as e:  # a malformed multipart body
            raise errors.InvalidInput(f"malformed multipart body: {describe_error(e)}") from e
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise errors.InvalidInput(
                "the multipart form has no file; send the image as a file field (curl -F file=@cat.jpg ...)"
            )
        return files
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [(request.headers.get("x-filename", "upload"), await request.body())]
    raise errors.InvalidInput(
        f"content type {kind or '(none)'!r}: POST /predict takes an image as a multipart form "
        "(curl -F file=@cat.jpg) or as the raw body with an image/* content type"
    )


def _overlay_data_url(model: ImageModel, job: Any, index: int, data: bytes) -> str:
    from ..processing import load_image

    view = model.task.served_view(model.pipe, load_image(data), job.answers[index])
    buffer = io.BytesIO()
    view.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """The server's and uvicorn's logs on stderr, as JSON lines (`json`) or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for name in ("pvtkit", "uvicorn.error", "kserve"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(getattr(logging, level.upper()))
        log.propagate = False
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8080, grace_s: float = 30.0) -> Any:
    """A `uvicorn.Server` for `app`: on SIGTERM / SIGINT (or `server.should_exit = True`) it stops accepting, lets
    what is in flight finish (up to `grace_s`), then the app stops its models."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(grace_s),
        timeout_keep_alive=5,
    )
    return uvicorn.Server(config)


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8080, grace_s: float = 30.0) -> None:
    """Serve `app` until SIGTERM / SIGINT, then stop gracefully (`make_server`) and return."""
    server = make_server(app, host, port, grace_s)
    in_main = threading.current_thread() is threading.main_thread()
    # uvicorn re-raises the signal it stopped for once it is done; a no-op handler makes that a clean exit 0.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
