"""Settings from the environment, read once into one immutable object; and logging.

Every knob of the service is here, with its environment variable and default. Code receives a
`Settings` instance rather than reading `os.environ`, so a test can build an app with its own.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

# The registry imports no torch: the settings check names without loading the network's code.
from u2net.registry import (
    DEVICES,
    ENGINES,
    MODELS,
    PRECISIONS,
    engine_precision_error,
    is_custom_model,
    is_device_name,
)

from bgservice.logdb import DatabaseLogHandler, LogDbConfig, LogDbSettingsError
from bgservice.logs import LOG_FORMATS
from Image_PostProcesser import THRESHOLD_EDGES


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _number(env: Mapping[str, str], name: str, default, lo, hi, kind=int):
    """Environment variable `name` as `kind` (int or float) within [lo, hi], else `default`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise SettingsError(f"{name} must be {noun}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def checked_model(value: str, variable: str) -> str:
    """`value` if it is a registry name or the path of a custom ONNX model (u2net/custom.py)."""
    if value not in MODELS and not is_custom_model(value):
        raise SettingsError(f"{variable} must be one of {', '.join(MODELS)}, or the path of an "
                            f".onnx file with its .onnx.json description beside it; got {value!r}")
    return value


def model_entry(text: str, variable: str) -> tuple[str, Path | None]:
    """'NAME' or 'NAME=WEIGHTS' (an entry of U2NET_MODELS, `bgremove evaluate --model`): the
    model, checked, and its own weights file if it names one."""
    name, _, weights = (part.strip() for part in text.partition("="))
    return checked_model(name, variable), Path(weights).expanduser() if weights else None


def _model(env: Mapping[str, str], name: str, default: str) -> str:
    return checked_model(env.get(name, "").strip() or default, name)


def _models(env: Mapping[str, str], default: str) -> dict:
    """model, weights and more_models from U2NET_MODELS, else U2NET_MODEL and U2NET_WEIGHTS.

    U2NET_MODELS lists registry names or .onnx paths, comma-separated, each optionally with
    =WEIGHTS (a .pth or .onnx for that architecture); the first is the default, and takes
    U2NET_WEIGHTS when it names no weights of its own."""
    single = _model(env, "U2NET_MODEL", default)
    weights = _path(env, "U2NET_WEIGHTS")
    listed = [e.strip() for e in env.get("U2NET_MODELS", "").split(",") if e.strip()]
    if not listed:
        return {"model": single, "weights": weights}
    entries = [model_entry(entry, "U2NET_MODELS") for entry in listed]
    names = [name for name, _ in entries]
    if len(set(names)) != len(names):
        raise SettingsError(f"U2NET_MODELS names a model twice: {', '.join(names)}")
    if env.get("U2NET_MODEL", "").strip() and single != names[0]:
        raise SettingsError(f"U2NET_MODEL={single} but U2NET_MODELS starts with {names[0]}: the "
                            "first of U2NET_MODELS is the default; set one of the two")
    (first, first_weights), *rest = entries
    return {"model": first, "weights": first_weights or weights, "more_models": tuple(rest)}


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def _sha256(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip().lower()
    if raw and not re.fullmatch(r"[0-9a-f]{64}", raw):
        raise SettingsError(f"{name} must be 64 hexadecimal digits (a SHA-256), got {raw[:80]!r}")
    return raw or None


def _token(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if len(raw) < 16 or not raw.isascii() or not raw.isprintable():
        raise SettingsError(f"{name} must be at least 16 printable ASCII characters "
                            "(e.g. from `openssl rand -hex 32`)")
    return raw


def _log_db(env: Mapping[str, str]) -> LogDbConfig | None:
    try:
        return LogDbConfig.from_env(env)
    except LogDbSettingsError as exc:
        raise SettingsError(str(exc)) from None


@dataclass(frozen=True)
class Settings:
    # Shared filesystem root that request paths are relative to (OpenClone_OpenCloneFS); unset,
    # ./OpenCloneFS in the working directory (not next to the installed code, which after
    # `pip install .` is site-packages).
    fs_root: Path = Path("OpenCloneFS")
    fs_root_from_env: bool = False
    # Model and weights (U2NET_MODEL, U2NET_MODELS_DIR, U2NET_WEIGHTS).
    model: str = "u2net_human_seg"
    models_dir: Path = Path("saved_models")  # in the working directory, as fs_root
    weights: Path | None = None
    # More models in the same worker (U2NET_MODELS="first,second=weights.pth,/m/custom.onnx"):
    # each with its own runtime; a request picks one by name. `model` and `weights` are the
    # first (the default); these are the others, as (name, weights or None).
    more_models: tuple[tuple[str, Path | None], ...] = ()
    # The SHA-256 that `bgremove download` must verify (U2NET_WEIGHTS_SHA256; the authors publish
    # none, so a deployment pins the one it trusts).
    weights_sha256: str | None = None
    # Where and how the network runs (U2NET_DEVICE: auto|cpu|cuda|cuda:N; U2NET_ENGINE:
    # auto|torch|onnxruntime, auto = ONNX Runtime on CPU, PyTorch on CUDA; U2NET_PRECISION).
    device: str = "auto"
    engine: str = "auto"
    precision: str = "auto"  # fp32, or on an AMX CPU the faster of centred bf16 and fp32
    # torch.compile for centred bf16 on CPU (U2NET_COMPILE: on|off; off starts faster, runs slower)
    compile: bool = True
    # ONNX exports and compiled kernels are cached here (U2NET_CACHE_DIR; default
    # <models_dir>/.cache).
    cache_dir: Path | None = None
    # Dynamic batching (U2NET_MAX_BATCH, U2NET_BATCH_WAIT_MS) and the bound on waiting work
    # (U2NET_MAX_QUEUE); beyond it requests get 503 with Retry-After.
    max_batch: int = 0  # 0 = auto: 8 on CUDA, 1 on CPU
    batch_wait_ms: float = 0.0
    max_queue: int = 32
    # A request waits at most this long for the network (U2NET_REQUEST_TIMEOUT_S): below the
    # website's 100 s HTTP timeout so it gets our 503 rather than its own timeout.
    request_timeout_s: float = 90.0
    # Untrusted input limits: pixels checked from the header before decoding (MAX_IMAGE_PIXELS;
    # 50 MP covers 8K and phone photos) and source file size (MAX_SOURCE_MB).
    max_image_pixels: int = 50_000_000
    max_source_bytes: int = 100 * 1024 * 1024
    # Memory for the images in flight in one worker (U2NET_MEMORY_BUDGET_MB): each reserves its
    # measured peak (bytes per pixel of its mode) before decoding; one that does not fit waits up
    # to U2NET_MEMORY_WAIT_S, then 503; one bigger than the budget, 413. 1,152 MB: 1 GiB for the
    # requests (a 50 MP threshold cut-out fits) plus the 128 MB Pillow keeps for reuse; one
    # worker with U2NET (about 1.2 GB idle with ONNX Runtime) stays near 2.3 GB.
    memory_budget_bytes: int = 1152 * 1024 * 1024
    memory_wait_s: float = 10.0
    # Largest upload to /api/remove (MAX_UPLOAD_MB); beyond it, 413.
    max_upload_bytes: int = 50 * 1024 * 1024
    # The output mode for callers that send neither `mode` nor `threshold` (U2NET_DEFAULT_MODE):
    # refine, by measurement (README, "Cut-out quality"). A sent threshold always means the
    # OpenClone threshold rule.
    default_mode: str = "refine"
    # What a request with a threshold gets at the edge (U2NET_THRESHOLD_EDGES): "hard", the old
    # rule exactly, or "refined": the threshold still decides what is subject, refine draws the
    # edge and cleans its colours (Image_PostProcesser.refined_threshold; README, "The website's
    # cut-outs"). OpenClone upgrades by changing this variable, not the website.
    threshold_edges: str = "hard"
    # `python API.py` listens on HOST:PORT; loopback unless told otherwise (the containers set
    # HOST=0.0.0.0 explicitly). gunicorn_conf.py binds the same.
    host: str = "127.0.0.1"
    port: int = 5002
    # An optional shared secret (U2NET_API_TOKEN): when set, every route but /health, /ready and
    # the web page's own files needs `Authorization: Bearer <token>`.
    api_token: str | None = field(default=None, repr=False)  # never in logs
    log_level: str = "INFO"
    log_format: str = "text"  # LOG_FORMAT: text, or json (one object per line, for collectors)
    # OpenClone's PostgreSQL log database (OpenClone_DB_Host, OpenClone_DB_Port,
    # OpenClone_LogDB_Name, OpenClone_LogDB_User, OpenClone_LogDB_Password; bgservice.logdb):
    # when set, the service's log records also go there, as LogWeaver writes them.
    log_db: LogDbConfig | None = None
    warmup_runs: int = 2
    # The production server (gunicorn_conf.py): workers (WEB_CONCURRENCY), request threads per
    # worker (GUNICORN_THREADS; 0 = auto, see gunicorn_threads), the request timeout
    # (GUNICORN_TIMEOUT) and recycling (GUNICORN_MAX_REQUESTS).
    web_concurrency: int = 1
    threads: int = 0
    gunicorn_timeout: int = 180
    gunicorn_max_requests: int = 2000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        root = _path(env, "OpenClone_OpenCloneFS")
        level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
        engine = _choice(env, "U2NET_ENGINE", cls.engine, ENGINES)
        precision = _choice(env, "U2NET_PRECISION", cls.precision, PRECISIONS)
        clash = engine_precision_error(engine, precision)
        if clash:
            raise SettingsError(f"U2NET_ENGINE={engine} with U2NET_PRECISION={precision}: {clash}")
        device = env.get("U2NET_DEVICE", "").strip() or cls.device
        if not is_device_name(device):
            raise SettingsError(f"U2NET_DEVICE must be {DEVICES}, got {device!r}")
        return cls(
            fs_root=root or Path.cwd() / cls.fs_root,
            fs_root_from_env=root is not None,
            **_models(env, cls.model),
            models_dir=_path(env, "U2NET_MODELS_DIR") or Path.cwd() / cls.models_dir,
            weights_sha256=_sha256(env, "U2NET_WEIGHTS_SHA256"),
            device=device,
            engine=engine,
            cache_dir=_path(env, "U2NET_CACHE_DIR"),
            precision=precision,
            compile=_choice(env, "U2NET_COMPILE", "on", ("on", "off")) == "on",
            max_batch=_number(env, "U2NET_MAX_BATCH", cls.max_batch, 0, 256),
            batch_wait_ms=_number(env, "U2NET_BATCH_WAIT_MS", cls.batch_wait_ms, 0, 1000, float),
            max_queue=_number(env, "U2NET_MAX_QUEUE", cls.max_queue, 1, 10_000),
            request_timeout_s=_number(env, "U2NET_REQUEST_TIMEOUT_S", cls.request_timeout_s, 1, 3600,
                                      float),
            max_image_pixels=_number(env, "MAX_IMAGE_PIXELS", cls.max_image_pixels, 1, 1_000_000_000),
            max_source_bytes=_number(env, "MAX_SOURCE_MB", cls.max_source_bytes >> 20, 1, 10_000) << 20,
            memory_budget_bytes=_number(env, "U2NET_MEMORY_BUDGET_MB", cls.memory_budget_bytes >> 20,
                                        16, 1_000_000) << 20,
            memory_wait_s=_number(env, "U2NET_MEMORY_WAIT_S", cls.memory_wait_s, 0, 3600, float),
            max_upload_bytes=_number(env, "MAX_UPLOAD_MB", cls.max_upload_bytes >> 20, 1, 10_000) << 20,
            default_mode=_choice(env, "U2NET_DEFAULT_MODE", cls.default_mode,
                                 ("threshold", "soft", "refine")),
            threshold_edges=_choice(env, "U2NET_THRESHOLD_EDGES", cls.threshold_edges,
                                    THRESHOLD_EDGES),
            host=env.get("HOST", "").strip() or cls.host,
            port=_number(env, "PORT", cls.port, 1, 65535),
            api_token=_token(env, "U2NET_API_TOKEN"),
            log_level=level,
            log_format=_choice(env, "LOG_FORMAT", cls.log_format, LOG_FORMATS),
            log_db=_log_db(env),
            warmup_runs=_number(env, "U2NET_WARMUP_RUNS", cls.warmup_runs, 0, 100),
            web_concurrency=_number(env, "WEB_CONCURRENCY", cls.web_concurrency, 1, 64),
            threads=_number(env, "GUNICORN_THREADS", cls.threads, 0, 1024),
            gunicorn_timeout=_number(env, "GUNICORN_TIMEOUT", cls.gunicorn_timeout, 1, 86_400),
            gunicorn_max_requests=_number(env, "GUNICORN_MAX_REQUESTS", cls.gunicorn_max_requests,
                                          0, 10_000_000),
        )

    @property
    def gunicorn_threads(self) -> int:
        """Request threads per worker: GUNICORN_THREADS, else 8, or twice U2NET_MAX_BATCH when
        that is larger.

        A batch can only be as large as the number of requests in flight, and each request holds
        a thread from decode to write. Twice the batch lets one full batch run on the GPU while
        the next one decodes and the previous one encodes; with only max_batch threads, the
        batches under load stay smaller than configured. 8 (CPU, max batch 1) keeps memory
        bounded at 12 MP."""
        return self.threads or max(8, 2 * self.max_batch)

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    @property
    def served_models(self) -> tuple[tuple[str, Path | None], ...]:
        """Every (model, weights) this worker serves, the default first."""
        return ((self.model, self.weights), *self.more_models)

    def runtime_options(self, model: str | None = None, weights: Path | None = None):
        """The model runtime's share of the settings, for the default model or `model`."""
        from u2net.runtime import RuntimeOptions

        if model is None:
            model, weights = self.model, self.weights
        return RuntimeOptions(model=model, models_dir=self.models_dir, weights=weights,
                              device=self.device, engine=self.engine, precision=self.precision,
                              compile=self.compile, cache_dir=self.cache_dir or self.models_dir / ".cache",
                              max_batch=self.max_batch, max_wait_ms=self.batch_wait_ms,
                              max_queue=self.max_queue, warmup_runs=self.warmup_runs)


_log_database: DatabaseLogHandler | None = None  # this process's, once configured


def configure_logging(level: str = "INFO", fmt: str = "text",
                      log_db: LogDbConfig | None = None) -> None:
    """One log format for the app, gunicorn workers and the CLI: stderr, with the process id and
    the request's id (bgservice.logs), as text or, with LOG_FORMAT=json, one JSON object a line;
    and with `log_db`, OpenClone's log database too (one writer per process, started here:
    after gunicorn's fork, in the worker that uses it)."""
    from bgservice.logs import RequestIdFilter, make_handler

    global _log_database
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_u2net", False)]:
        root.removeHandler(old)
    handler = make_handler(sys.stderr, fmt)
    handler._u2net = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    if _log_database is not None and (log_db is None or _log_database.config != log_db):
        close_log_database()
    if log_db is not None:
        if _log_database is None:
            _log_database = DatabaseLogHandler(log_db)
            _log_database.addFilter(RequestIdFilter())
        root.addHandler(_log_database)


@atexit.register  # once: a no-op when no writer runs
def close_log_database(timeout: float = 5.0) -> None:
    """Writes what the log database's queue holds (within `timeout`) and stops its writer: at
    exit, and from gunicorn's worker_exit hook on a graceful stop."""
    global _log_database
    handler, _log_database = _log_database, None
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close(timeout)
