"""Production server settings: `gunicorn -c gunicorn_conf.py` (the Dockerfile's command).

Every value comes from GlobalVariables.Settings, checked here in the master at start: a bad
variable stops the server with one line naming it (exit 2) before any worker boots. Nothing here
imports torch: the master process must never touch CUDA. Each worker builds the app (and loads
the model) itself after fork, because preload_app is off.
"""
import os
import signal
import sys
import tempfile

from GlobalVariables import Settings, SettingsError

try:
    settings = Settings.from_env()
except SettingsError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)

# Prometheus' multiprocess mode (bgservice/telemetry.py): each worker writes its samples into this
# folder, and /metrics in any worker merges them. gunicorn puts raw_env into the environment at
# start, before any worker imports prometheus_client (importing this file changes nothing). The
# folder is emptied at each start: a previous run's dead workers must not count.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="u2net-metrics-")
os.makedirs(_metrics_dir, exist_ok=True)
for _name in os.listdir(_metrics_dir):
    if _name.endswith(".db"):
        os.remove(os.path.join(_metrics_dir, _name))
raw_env = [f"PROMETHEUS_MULTIPROC_DIR={_metrics_dir}"]

# Loopback unless HOST says otherwise, as `python API.py`: the containers set HOST=0.0.0.0, and
# deploy/run-local.sh keeps gunicorn on loopback behind nginx.
bind = f"{settings.host}:{settings.port}"
wsgi_app = "API:create_app()"
preload_app = False  # load the model in each worker, after fork (CUDA-safe)

# One worker holds one copy of the model; its threads share it through the dynamic batcher, and
# decode/encode in parallel while the network runs. More workers only pay off with spare cores.
workers = settings.web_concurrency
worker_class = "gthread"
threads = settings.gunicorn_threads

# Longer than the slowest request (a 50 MP image on CPU, or a full queue) and than the website's
# 100 s client timeout, so a slow request is never killed half-way.
timeout = settings.gunicorn_timeout
graceful_timeout = 60
keepalive = 5

# Recycle workers now and then (bounded memory over months), with jitter so they don't restart
# together.
max_requests = settings.gunicorn_max_requests
max_requests_jitter = max(1, max_requests // 10)

accesslog = "-"
errorlog = "-"
loglevel = settings.log_level.lower()
# gunicorn's access line ends with the request's id (X-Request-ID, bgservice.logs), as the app's
# own lines carry it.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'
if settings.log_format == "json":  # gunicorn's own lines as JSON objects too (LOG_FORMAT)
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "bgservice.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "loggers": {name: {"handlers": ["stderr"], "level": level, "propagate": False}
                    for name, level in (("gunicorn.error", settings.log_level), ("gunicorn.access", "INFO"))},
        # gunicorn's default root handler would print the app's lines a second time, as text;
        # the app installs its own (GlobalVariables.configure_logging) when the worker loads it.
        "root": {"level": settings.log_level, "handlers": []},
    }
# Respond to Docker/Kubernetes stop signals promptly.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# gunicorn's exit status for "Worker failed to boot": on it the master stops the whole server.
WORKER_BOOT_ERROR = 3


def post_worker_init(worker):
    """A worker whose model fails (its warm-up: CUDA out of memory, a driver error; or forward
    passes failing again and again afterwards: a lost GPU) exits as a boot failure, so gunicorn
    stops and the container exits: Docker's restart policy or Kubernetes then restarts it with
    back-off, where a live process that can't serve would sit there."""
    def stop(error: str) -> None:
        worker.log.error("model runtime failed (%s); stopping the server (exit %d)", error,
                         WORKER_BOOT_ERROR)
        os._exit(WORKER_BOOT_ERROR)

    state = worker.wsgi.extensions["u2net"]
    for runtime in state.runtimes:
        runtime.on_failure(stop)

    # A clean drain: on SIGTERM the worker refuses new work and /ready answers 503 at once (so
    # Kubernetes stops routing here), then gunicorn's own handler stops accepting connections
    # and lets the requests in flight finish (up to graceful_timeout); worker_exit then writes
    # the log database's queue, and the server exits 0.
    gunicorns_handler = signal.getsignal(signal.SIGTERM)

    def drain(signum, frame):
        state.remover.draining.set()
        if callable(gunicorns_handler):
            gunicorns_handler(signum, frame)

    signal.signal(signal.SIGTERM, drain)


def worker_exit(server, worker):
    """A worker stops (SIGTERM, recycling): what its log database queue holds is written first."""
    from GlobalVariables import close_log_database

    close_log_database()


def child_exit(server, worker):
    """A worker is gone: its live gauges (queue depth) stop counting in /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
