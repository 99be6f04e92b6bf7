"""The HTTP service: an OpenClone-compatible background remover on port 5002.

Development:  python API.py
Production:   gunicorn -c gunicorn_conf.py   (what the Dockerfile runs)

`create_app` is an application factory: it reads the settings, assembles the service once for
this process (bgservice.service.assemble: a gunicorn worker loads the model after fork and warms
it up), registers the routes (the `routes` Blueprint) and returns the app. Routes stay thin:
validate the request, call the core (bgservice), return JSON. Every error becomes
{"error": "<plain message>"} with its status code in one place, `_register_error_handlers`.
This module is the HTTP layer: the core never imports it.
"""
from __future__ import annotations

import atexit
import contextvars
import hmac
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path
from u2net.registry import ModelLoadError
from u2net.runtime import ModelRuntime
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException
from werkzeug.test import encode_multipart  # a documented helper: the multipart body we send

from bgservice import telemetry
from bgservice.errors import (
    BadRequest,
    ServiceError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from bgservice.fields import BG_IMAGE, BG_IMAGE_PATH, JSON_OPTIONS, PATHS, REMOVE_FIELDS, refuse_unknown
from bgservice.logs import incoming_or_new, request_id
from bgservice.options import OutputOptions, parse_options, resolve_mode
from bgservice.paths import SharedRoot
from bgservice.pipeline import BackgroundRemover, PathJob, PathResult
from bgservice.service import assemble
from GlobalVariables import Settings, SettingsError, configure_logging
from webapp.openapi import openapi_spec

log = logging.getLogger("u2net_service.api")

MAX_JSON_BYTES = 64 * 1024
MAX_BATCH_JOBS = 32
WEB_DIR = Path(__file__).resolve().parent / "webapp" / "static"
WEB_FILES = ("page.js", "page.css", "docs.js")
# The browsable API page (/docs): Swagger UI's files, from the swagger-ui-bundle package.
DOCS_DIR = Path(swagger_ui_path)
DOCS_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


@dataclass(frozen=True)
class ServiceState:
    settings: Settings
    root: SharedRoot
    runtimes: tuple[ModelRuntime, ...]  # every served model, the default first
    remover: BackgroundRemover
    jobs: ThreadPoolExecutor  # batch jobs, side by side (see create_app)


def create_app(settings: Settings | None = None,
               runtime: ModelRuntime | Sequence[ModelRuntime] | None = None,
               *, warm_up_in_background: bool = True) -> Flask:
    """The app for `settings`; `runtime`: already loaded model(s) to serve (tests), the default
    first."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, settings.log_db)
    service = assemble(settings, runtime, background=warm_up_in_background)

    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes  # JSON routes lower it to 64 KiB
    app.json.sort_keys = False  # type: ignore[attr-defined]  # the default provider's setting
    # Batch jobs run side by side so that the batcher can put them into one forward pass while
    # others decode and encode: twice a model batch (at least 4), as the request threads are
    # sized (gunicorn_conf.py). The memory budget bounds what they hold together.
    jobs = ThreadPoolExecutor(max(4, 2 * max(rt.max_batch for rt in service.runtimes)),
                              thread_name_prefix="batch-job")
    atexit.register(jobs.shutdown, wait=False, cancel_futures=True)
    assert service.root is not None  # assembled with the shared root
    app.extensions["u2net"] = ServiceState(settings, service.root, service.runtimes,
                                           service.remover, jobs)
    app.register_blueprint(routes)
    _register_error_handlers(app)
    _register_request_ids(app)
    _register_request_log(app)
    _register_draining(app)
    return app


def _state() -> ServiceState:
    return current_app.extensions["u2net"]


# -- request validation -------------------------------------------------------------------------

def _whole_body() -> bytes:
    """The request body (kept for the form parser); 413 when over the route's limit, chunked or
    not. Werkzeug stops reading a chunked body at the limit without saying so; a read past it
    raises its 413, so an oversized body is refused instead of being processed cut short."""
    data = request.get_data(cache=True, parse_form_data=False)
    if request.content_length is None:
        request.stream.read(1)
    return data


def _json_object() -> dict:
    # Only application/json: a browser may post text/plain or a form to any origin without a
    # preflight, so any web page a visitor opens could otherwise write into the shared root.
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as JSON with 'Content-Type: application/json'")
    try:
        body = json.loads(_whole_body())
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        body = None
    if not isinstance(body, dict):
        raise BadRequest('the request body must be a JSON object like {"sourceImagePath": '
                         '"/in.png", "outputImagePath": "/out.png", "threshold": 200}')
    return body


def _parse_remove_request(body: dict, default_mode: str) -> PathJob:
    refuse_unknown(body, REMOVE_FIELDS, "field")
    for name in PATHS:
        if name not in body:
            raise BadRequest(f"'{name}' is required")
    given = {field.name: field.from_json(body[name]) if name in body else field.default
             for name, field in JSON_OPTIONS.items()}
    mode, threshold = resolve_mode(given.pop("mode"), given.pop("threshold"), default_mode)
    options = OutputOptions(mode=mode, threshold=threshold,
                            **{k: v for k, v in given.items() if v is not None})
    # bgImagePath: checked by SharedRoot.parse like the other two (null: not given)
    return PathJob(body["sourceImagePath"], body["outputImagePath"], options,
                   body.get(BG_IMAGE_PATH))


def _result_json(result: PathResult) -> dict:
    """The website's answer (any JSON object is success to it; these are for people and logs)."""
    options = result.job.options
    return {"outputImagePath": result.job.output, "width": result.width,
            "height": result.height, "mode": options.mode, "threshold": options.threshold,
            "subjectFilter": options.subject_filter, "model": result.model,
            "bytes": result.bytes, "timings_ms": result.timings_ms}


# -- routes -------------------------------------------------------------------------------------

# The routes, as a Blueprint (the Flask tutorial's layout): create_app registers them.
routes = Blueprint("u2net", __name__)


@routes.get("/health")
def health():
    """200 while the process can serve or is still warming up; 503 once a model has failed
    (runtime.error), so that a liveness probe restarts it: it would never serve again."""
    for runtime in _state().runtimes:
        if runtime.error:
            return jsonify(status="failed", model=runtime.spec.name, error=runtime.error), 503
    return jsonify(status="ok")


@routes.get("/ready")
def ready():
    """200 once every served model is loaded and warm; 503 with Retry-After until then."""
    state = _state()
    state.remover.check_ready()
    return jsonify(ready=True, model=state.runtimes[0].spec.name,
                   models=[rt.spec.name for rt in state.runtimes])


@routes.get("/model-info")
def model_info():
    """The default model's description (as before several models could be served), every served
    model's under `models`, and the worker's limits."""
    state = _state()
    return jsonify({**state.runtimes[0].info(), "threshold_edges": state.remover.threshold_edges,
                    "limits": state.remover.limits_info(),
                    "models": {rt.spec.name: rt.info() for rt in state.runtimes}})


@routes.post("/remove-background")
def remove_background():
    state = _state()
    job = _parse_remove_request(_json_object(), state.settings.default_mode)
    return jsonify(_result_json(state.remover.remove_paths(state.root, job)))


@routes.post("/remove-background/batch")
def remove_background_batch():
    """Several website calls in one request; each job succeeds or fails on its own."""
    state = _state()
    jobs = _batch_jobs(_json_object())
    # Each job runs in a copy of this request's context, so its log lines carry the request's id.
    contexts = [contextvars.copy_context() for _ in jobs]
    outcomes = list(state.jobs.map(lambda pair: pair[0].run(_run_job, state, *pair[1]),
                                   zip(contexts, enumerate(jobs), strict=True)))
    failed = sum(1 for o in outcomes if o["status"] != 200)
    return jsonify(succeeded=len(outcomes) - failed, failed=failed, jobs=outcomes)


@routes.post("/api/remove")
def api_remove():
    """Upload an image (multipart `file` or the raw body); get the cut-out's bytes back."""
    state = _state()
    data, values, background = _upload()
    options = parse_options(values, state.settings.default_mode)
    if background is not None:
        options = replace(options, bg_image=background)
    # Accept: multipart/form-data (asked for by name, not by */*): the image and its mask in one
    # response (the web page shows both; one request, one model run).
    both = "multipart/form-data" in request.accept_mimetypes.values()
    rendered = state.remover.process(data, options, want_bbox=True, want_mask=both)
    if both:
        response = _image_and_mask(rendered, options.output_format)
    else:
        response = Response(rendered.data, mimetype=rendered.content_type)
    bbox = ",".join(map(str, rendered.bbox)) if rendered.bbox else "none"
    response.headers.update({
        "X-Image-Size": f"{rendered.width}x{rendered.height}",
        "X-Source-Size": f"{rendered.source_width}x{rendered.source_height}",
        "X-Bounding-Box": bbox,
        "X-Mode": "mask" if options.only_mask else options.mode,
        "X-Model": rendered.model,
        "Server-Timing": ", ".join(f"{k};dur={v}" for k, v in rendered.timings_ms.items()),
        "Content-Disposition": f'inline; filename="cutout.{options.output_format}"',
    })
    if options.mode == "threshold":
        response.headers["X-Threshold"] = str(options.threshold)
    if both:  # the parts carry their own names
        del response.headers["Content-Disposition"]
    return response


@routes.get("/metrics")
def metrics():
    """Prometheus' text format: requests, stage latencies, queue depth, batch sizes, images,
    refusals, model load and warm-up times, and which models run how (bgservice.telemetry)."""
    body, content_type = telemetry.render()
    return Response(body, content_type=content_type)


@routes.get("/openapi.json")
def openapi():
    state = _state()
    return jsonify(openapi_spec(state.settings, MAX_BATCH_JOBS, MAX_JSON_BYTES, PUBLIC_PATHS,
                                tuple(state.remover.runtimes)))


@routes.get("/")
def web_page():
    """A page for trying it by hand (no external resources: works offline)."""
    return send_from_directory(WEB_DIR, "index.html")


for _name in WEB_FILES:  # the pages' scripts and style (a strict CSP allows no inline code)
    routes.add_url_rule(f"/web/{_name}", "web_" + _name.replace(".", "_"),
                        lambda name=_name: send_from_directory(WEB_DIR, name), methods=["GET"])


@routes.get("/docs")
def docs_page():
    """The API, browsable, with "try it out" (Swagger UI, served from here: works offline)."""
    return send_from_directory(WEB_DIR, "docs.html")


for _name in DOCS_FILES:
    routes.add_url_rule(f"/docs/{_name}", "docs_" + _name.replace(".", "_").replace("-", "_"),
                        lambda name=_name: send_from_directory(DOCS_DIR, name), methods=["GET"])


def _image_and_mask(rendered, fmt: str) -> Response:
    """A multipart/form-data body with parts `image` (the output) and `mask` (8-bit PNG):
    a browser reads it with `Response.formData()`."""
    parts = {"image": FileStorage(io.BytesIO(rendered.data), f"cutout.{fmt}",
                                  content_type=rendered.content_type),
             "mask": FileStorage(io.BytesIO(rendered.mask), "mask.png", content_type="image/png")}
    boundary, body = encode_multipart(parts)
    return Response(body, mimetype="multipart/form-data",
                    content_type=f"multipart/form-data; boundary={boundary}")


def _upload() -> tuple[bytes, dict, bytes | None]:
    """(image bytes, option strings, background picture's bytes or None) from a multipart form
    (fields `file` and `bg_image`) or a raw body plus query string."""
    if request.content_length is None:  # chunked: read it now, so that its size is checked
        _whole_body()
    values = dict(request.args)
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise BadRequest("a multipart upload needs the image in a field named 'file'")
        for key in request.form:
            values[key] = request.form[key]
        data = upload.read()
        picture = request.files.get(BG_IMAGE)
        background = picture.read() if picture is not None else None
        if background == b"":
            raise BadRequest(f"'{BG_IMAGE}' is empty: send a picture, or leave the field out")
    else:  # raw body; never parse it as a form (curl --data-binary sends a form content type)
        data = request.get_data(cache=False, parse_form_data=False)
        background = None
    if not data:
        raise BadRequest("send an image: a multipart field 'file', or the raw request body")
    return data, values, background


def _batch_jobs(body: dict) -> list:
    refuse_unknown(body, ("jobs",), "field")
    jobs = body.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise BadRequest("'jobs' must be a non-empty list of remove-background requests")
    if len(jobs) > MAX_BATCH_JOBS:
        raise BadRequest(f"at most {MAX_BATCH_JOBS} jobs per batch, got {len(jobs)}")
    return jobs


def _run_job(state: ServiceState, index: int, job: object) -> dict:
    try:
        if not isinstance(job, dict):
            raise BadRequest("each job must be a JSON object like the single call's body")
        result = state.remover.remove_paths(
            state.root, _parse_remove_request(job, state.settings.default_mode))
        return {"index": index, "status": 200, "result": _result_json(result)}
    except ServiceError as exc:
        _count_refusal(exc)
        return {"index": index, "status": exc.status, "error": exc.message}
    except Exception:  # one job's bug must not fail its neighbours; the log has the traceback
        log.exception("batch job %d failed", index)
        return {"index": index, "status": 500, "error": "internal error; the service log has the details"}


# -- errors and logging -------------------------------------------------------------------------

def _error(message: str, status: int, retry_after: int | None = None):
    response = jsonify(error=message)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _count_refusal(exc: ServiceError) -> None:
    if isinstance(exc, Unavailable):
        telemetry.REFUSALS.labels(exc.reason).inc()


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        _count_refusal(exc)
        return _error(exc.message, exc.status, exc.retry_after)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        # Flask's own 404 / 405 / 413, as JSON like everything else.
        return _error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error("internal error; the service log has the details", 500)


# What a browser may do with a response. The page loads only its own script, style and the
# images it makes (blob:); nothing may frame it. API responses may do nothing at all.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# The API page: as the page, but Swagger UI sets inline styles (swagger-api/swagger-ui#3370);
# its scripts are still only this service's own files.
DOCS_POLICY = PAGE_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
# Open without the token: the probes, and the pages' own files (they then ask for it).
# /metrics too: Prometheus scrapes it, and it holds counts, not callers' data.
PUBLIC_PATHS = ("/health", "/ready", "/metrics", "/", *(f"/web/{name}" for name in WEB_FILES),
                "/docs", *(f"/docs/{name}" for name in DOCS_FILES))


def _check_token(expected: str) -> None:
    sent = request.headers.get("Authorization", "")
    scheme, _, token = sent.partition(" ")
    # compare_digest: the time taken does not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("this service needs 'Authorization: Bearer <token>' (U2NET_API_TOKEN)")


def _register_request_ids(app: Flask) -> None:
    """Each request's id (its X-Request-ID when sane, else a new one): on every log line it
    causes (bgservice.logs) and in the response's X-Request-ID."""
    @app.before_request
    def take_request_id():
        g.request_id = incoming_or_new(request.headers.get("X-Request-ID"))
        g.request_id_token = request_id.set(g.request_id)

    @app.after_request
    def return_request_id(response):
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
        return response

    @app.teardown_request
    def forget_request_id(_exc):
        if "request_id_token" in g:
            request_id.reset(g.request_id_token)


def _register_draining(app: Flask) -> None:
    @app.before_request
    def refuse_when_stopping():
        """Stopping (SIGTERM, gunicorn_conf.py): requests already running finish; new ones, /ready
        included, are refused, so that Kubernetes and nginx send them elsewhere."""
        if _state().remover.draining.is_set() and request.path not in ("/health", "/metrics"):
            raise Unavailable("this worker is stopping; retry shortly (another will answer)",
                              retry_after=1, reason="draining")


def _register_request_log(app: Flask) -> None:
    @app.before_request
    def start_timer():
        g.started = time.perf_counter()
        if request.path != "/api/remove":  # only uploads may be large
            request.max_content_length = MAX_JSON_BYTES
        token = _state().settings.api_token
        if token and request.path not in PUBLIC_PATHS:
            _check_token(token)

    @app.after_request
    def security_headers(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        page = response.mimetype == "text/html"
        response.headers["Content-Security-Policy"] = (
            API_POLICY if not page else DOCS_POLICY if request.path == "/docs" else PAGE_POLICY)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="u2net"'
        return response

    @app.after_request
    def count_request(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        telemetry.REQUESTS.labels(route, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            telemetry.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
        return response

    @app.after_request
    def log_request(response):
        if request.path not in ("/health", "/ready"):
            elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
            log.info("%s %s -> %d in %.0f ms", request.method, request.path,
                     response.status_code, elapsed)
        return response


def main() -> int:
    """Development server: `python API.py` (production runs gunicorn; see gunicorn_conf.py)."""
    try:
        settings = Settings.from_env()
        app = create_app(settings)
    except (SettingsError, ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.run(host=settings.host, port=settings.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
