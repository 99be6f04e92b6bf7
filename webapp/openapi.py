"""The OpenAPI 3 description served at /openapi.json.

Written out by hand next to the routes it describes; tests/test_openapi.py runs a property-based
test (schemathesis) against the live app, so a route and its description cannot drift apart.
"""
from __future__ import annotations

from importlib import metadata

import Image_PostProcesser as post
from bgservice.fields import (
    BG_IMAGE,
    BG_IMAGE_HELP,
    BG_IMAGE_PATH,
    FORMATS,
    JSON_OPTIONS,
    MODEL,
    OPTIONS,
    PATHS,
)

_ERROR = {"$ref": "#/components/schemas/Error"}


def service_version() -> str:
    """The one version number: pyproject.toml's, as installed."""
    try:
        return metadata.version("u2net-service")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def _errors(*codes: int) -> dict:
    text = {400: "Malformed body, a bad field, or a path that leaves the shared root",
            401: "U2NET_API_TOKEN is set and the request lacks 'Authorization: Bearer <token>'",
            403: "The shared filesystem refused the operation (permissions, read-only)",
            404: "The source image does not exist", 409: "The folders changed while it ran; retry",
            413: "Body, file or image too large", 415: "The body must be application/json",
            422: "Not a decodable image", 500: "Unexpected error (the log has the details)",
            503: "Model still warming up, or too busy; see Retry-After",
            507: "The shared filesystem is full"}
    return {str(c): {"description": text[c],
                     "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _schema(field, models: tuple[str, ...]) -> dict:
    """A field's JSON schema; the model field lists the models this service serves."""
    schema = field.json_schema()
    if field is MODEL and models:
        schema["enum"] = list(models)
        schema["description"] += f". Served here: {', '.join(models)}"
    return schema


def _option_params(models: tuple[str, ...]) -> list[dict]:
    """The upload endpoint's options, from their one description (bgservice.fields)."""
    params = []
    for field in OPTIONS:
        schema = _schema(field, models)
        params.append({"name": field.name, "in": "query", "required": False,
                       "description": schema.pop("description"), "schema": schema})
    return params


def openapi_spec(settings, max_batch_jobs: int, max_json_bytes: int,
                 public_paths: tuple[str, ...] = (), models: tuple[str, ...] = ()) -> dict:
    """The description; with U2NET_API_TOKEN set, every operation but `public_paths` needs it.
    `models`: the names of the served models (the `model` field's values)."""
    spec = _spec(settings, max_batch_jobs, max_json_bytes, models)
    if settings.api_token:
        spec["security"] = [{"bearer": []}]
        for path in public_paths:
            for operation in spec["paths"][path].values():
                operation["security"] = []
    return spec


def _spec(settings, max_batch_jobs: int, max_json_bytes: int, models: tuple[str, ...]) -> dict:
    remove_request = {
        "type": "object",
        "required": list(PATHS),
        # the website's request: what /docs fills in for "try it out"
        "example": {"sourceImagePath": "/Clones/4/clone-image-with-bg.png",
                    "outputImagePath": "/Clones/4/clone-image-no-bg.png", "threshold": 200},
        "additionalProperties": False,
        "properties": {
            "sourceImagePath": {"type": "string", "example": "/Clones/4/clone-image-with-bg.png",
                                "description": "Relative to the shared root (leading / allowed)"},
            "outputImagePath": {"type": "string", "example": "/Clones/4/clone-image-no-bg.png"},
            BG_IMAGE_PATH: {"type": "string", "nullable": True, "example": "/Backgrounds/beach.jpg",
                            "description": BG_IMAGE_HELP + "; relative to the shared root"},
            **{name: {**_schema(field, models),
                      **({"nullable": True} if field.default is None else {})}
               for name, field in JSON_OPTIONS.items()},
        },
    }
    remove_result = {
        "type": "object",
        "required": ["outputImagePath", "width", "height", "mode", "model"],
        "properties": {
            "outputImagePath": {"type": "string"}, "width": {"type": "integer"},
            "height": {"type": "integer"}, "mode": {"type": "string", "enum": list(post.MODES)},
            "threshold": {"type": "integer", "nullable": True}, "model": {"type": "string"},
            "subjectFilter": {"type": "boolean"},
            "bytes": {"type": "integer"},
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    }
    image_types = {t: {"schema": {"type": "string", "format": "binary"}} for t in FORMATS.values()}
    return {
        "openapi": "3.0.3",
        "info": {"title": "U2-Net background removal", "version": service_version(),
                 "description": "OpenClone-compatible background removal with U2-Net."},
        "paths": {
            "/remove-background": {"post": {
                "summary": "Cut out a file on the shared filesystem (the website's call)",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/RemoveRequest"}}}},
                "responses": {"200": {"description": "Written", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/RemoveResult"}}}},
                    **_errors(400, 401, 403, 404, 409, 413, 415, 422, 500, 503, 507)},
            }},
            "/remove-background/batch": {"post": {
                "summary": f"Up to {max_batch_jobs} website calls at once; each succeeds or fails alone",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["jobs"], "additionalProperties": False,
                    "properties": {"jobs": {"type": "array", "minItems": 1,
                                            "maxItems": max_batch_jobs,
                                            "items": {"$ref": "#/components/schemas/RemoveRequest"}}}}}}},
                "responses": {"200": {"description": "One outcome per job", "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["succeeded", "failed", "jobs"],
                        "properties": {
                            "succeeded": {"type": "integer"}, "failed": {"type": "integer"},
                            "jobs": {"type": "array", "items": {
                                "type": "object", "required": ["index", "status"],
                                "properties": {
                                    "index": {"type": "integer"}, "status": {"type": "integer"},
                                    "result": {"$ref": "#/components/schemas/RemoveResult"},
                                    "error": {"type": "string"}}}}}}}}},
                    **_errors(400, 401, 413, 415, 500)},
            }},
            "/api/remove": {"post": {
                "summary": "Upload an image; get the cut-out back",
                "parameters": _option_params(models),
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {
                        "type": "object", "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"},
                                       BG_IMAGE: {"type": "string", "format": "binary",
                                                  "description": BG_IMAGE_HELP}}}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                }},
                "responses": {"200": {"description": "The image (headers: X-Image-Size, "
                                                     "X-Bounding-Box, X-Mode, X-Model, Server-Timing); "
                                                     "with 'Accept: multipart/form-data', the image "
                                                     "and its mask (8-bit PNG) as two parts",
                                      "content": {**image_types, "multipart/form-data": {"schema": {
                                          "type": "object", "properties": {
                                              "image": {"type": "string", "format": "binary"},
                                              "mask": {"type": "string", "format": "binary"}}}}}},
                              **_errors(400, 401, 413, 422, 500, 503)},
            }},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4), every "
                                            "worker's merged", "responses": {
                "200": {"description": "Requests, stage latencies, queue depth, batch sizes, "
                                       "images, refusals, model load and warm-up times",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/health": {"get": {"summary": "The process is alive (liveness)", "responses": {
                "200": {"description": "Alive, serving or still warming up", "content": {
                    "application/json": {"schema": {
                        "type": "object", "properties": {"status": {"type": "string"}}}}}},
                "503": {"description": "The model failed to warm up: restart the process",
                        "content": {"application/json": {"schema": {
                            "type": "object", "required": ["status", "error"],
                            "properties": {"status": {"type": "string"},
                                           "error": {"type": "string"}}}}}}}}},
            "/ready": {"get": {"summary": "The model is loaded and warm", "responses": {
                "200": {"description": "Ready", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"ready": {"type": "boolean"},
                                                     "model": {"type": "string"}}}}}},
                **_errors(503)}}},
            "/model-info": {"get": {"summary": "Model, weights, device, precision, batching",
                                    "responses": {"200": {"description": "Model info", "content": {
                                        "application/json": {"schema": {"type": "object"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3", "content": {"application/json": {
                    "schema": {"type": "object"}}}}}}},
            "/": {"get": {"summary": "A web page for trying it by hand", "responses": {
                "200": {"description": "HTML", "content": {"text/html": {
                    "schema": {"type": "string"}}}}}}},
            **{f"/web/{name}": {"get": {"summary": "The web pages' own script or style",
                                        "responses": {"200": {"description": "The file", "content": {
                                            kind: {"schema": {"type": "string"}}}}}}}
               for name, kind in (("page.js", "text/javascript"), ("page.css", "text/css"),
                                  ("docs.js", "text/javascript"))},
            "/docs": {"get": {"summary": "This description, browsable, with \"try it out\" "
                                         "(Swagger UI, served from here)", "responses": {
                "200": {"description": "HTML", "content": {"text/html": {
                    "schema": {"type": "string"}}}}}}},
            **{f"/docs/{name}": {"get": {"summary": "Swagger UI's own files (swagger-ui-bundle)",
                                         "responses": {"200": {"description": "The file", "content": {
                                             kind: {"schema": {"type": "string"}}}}}}}
               for name, kind in (("swagger-ui-bundle.js", "text/javascript"),
                                  ("swagger-ui.css", "text/css"), ("favicon-32x32.png", "image/png"))},
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "RemoveRequest": remove_request,
            "RemoveResult": remove_result,
        }},
        "x-limits": {"json_body_bytes": max_json_bytes,
                     "upload_bytes": settings.max_upload_bytes,
                     "image_pixels": settings.max_image_pixels},
    }
