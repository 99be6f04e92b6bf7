"""Prometheus metrics: what operators scale and alert on (GET /metrics, prometheus_client).

Under gunicorn every worker is a process of its own: gunicorn_conf.py points
PROMETHEUS_MULTIPROC_DIR at a fresh folder before any worker imports this module, each worker
writes its samples there, and `render` merges them (prometheus_client's multiprocess mode; a
worker's files are marked dead when it exits). Without that variable (`python API.py`, the CLI,
tests) the process's own registry is served.

Stage latencies come from the pipeline's Stopwatch (read, decode, resize, forward, upsample,
compose, encode, write); queue depth is the images waiting for or inside a model's forward pass.
"""
from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Decided once, as prometheus_client decides how to store values when it is imported (above).
_MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("u2net_requests", "HTTP requests answered, by route and status",
                   ["route", "status"])
REQUEST_SECONDS = Histogram("u2net_request_seconds", "HTTP request latency, by route", ["route"],
                            buckets=_SECONDS)
STAGE_SECONDS = Histogram("u2net_stage_seconds", "Time in each stage of a cut-out", ["stage"],
                          buckets=_SECONDS)
QUEUE_DEPTH = Gauge("u2net_queue_depth", "Images waiting for or in a model's forward pass",
                    ["model"], multiprocess_mode="livesum")
BATCH_SIZE = Histogram("u2net_batch_size", "Images per forward pass", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64))
IMAGES = Counter("u2net_images", "Images cut out", ["model"])
MEGAPIXELS = Counter("u2net_megapixels", "Megapixels cut out", ["model"])
REFUSALS = Counter("u2net_refusals", "Requests refused with 503, by reason", ["reason"])
MODEL_LOAD_SECONDS = Gauge("u2net_model_load_seconds", "Time to load a model", ["model"],
                           multiprocess_mode="max")
MODEL_WARMUP_SECONDS = Gauge("u2net_model_warmup_seconds", "Time to warm a model up "
                             "(compiling included)", ["model"], multiprocess_mode="max")
MODEL_INFO = Gauge("u2net_model_info", "1 for each model served, with how it runs",
                   ["model", "engine", "device", "precision"], multiprocess_mode="max")


def model_ready(info: dict, load_seconds: float | None,
                warmup_seconds: float | None = None) -> None:
    """A model finished warming up (ModelRuntime.info(); the warm-up's seconds, pipeline
    included, when known)."""
    name = info["model"]
    MODEL_INFO.labels(name, info["engine"], info["device"], info["precision"]).set(1)
    if load_seconds is not None:
        MODEL_LOAD_SECONDS.labels(name).set(load_seconds)
    warmup_seconds = warmup_seconds if warmup_seconds is not None else info.get("warmup_seconds")
    if warmup_seconds is not None:
        MODEL_WARMUP_SECONDS.labels(name).set(warmup_seconds)


def cut_out(model: str, pixels: int, stages_ms: dict) -> None:
    """One image through the pipeline: its model, size and stage times (milliseconds)."""
    IMAGES.labels(model).inc()
    MEGAPIXELS.labels(model).inc(pixels / 1e6)
    for stage, ms in stages_ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000)


def render() -> tuple[bytes, str]:
    """(the metrics in Prometheus' text format, its content type): every worker's, merged."""
    if _MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
