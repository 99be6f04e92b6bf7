"""Production server settings: `gunicorn -c gunicorn_conf.py` (the Dockerfile's command).

Nothing here imports torch: the master process must never touch CUDA. Each worker builds the app
(and loads the model) itself after fork, because preload_app is off.
"""
import os

# Loopback unless HOST says otherwise, as `python API.py`: the containers set HOST=0.0.0.0, and
# deploy/run-local.sh keeps gunicorn on loopback behind nginx.
bind = f"{os.environ.get('HOST', '').strip() or '127.0.0.1'}:{os.environ.get('PORT', '5002')}"
wsgi_app = "API:create_app()"
preload_app = False  # load the model in each worker, after fork (CUDA-safe)

# One worker holds one copy of the model; its threads share it through the dynamic batcher, and
# decode/encode in parallel while the network runs. More workers only pay off with spare cores.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "gthread"


def default_threads() -> int:
    """Request threads: 8, or twice U2NET_MAX_BATCH when that is larger.

    A batch can only be as large as the number of requests in flight, and each request holds a
    thread from decode to write. Twice the batch lets one full batch run on the GPU while the next
    one decodes and the previous one encodes; with only max_batch threads, the batches under load
    stay smaller than configured. 8 (CPU, max batch 1) keeps memory bounded at 12 MP.
    """
    try:
        max_batch = int(os.environ.get("U2NET_MAX_BATCH") or 0)
    except ValueError:
        max_batch = 0  # the worker's settings reject it with a clear message at start
    return max(8, 2 * max_batch)


threads = int(os.environ.get("GUNICORN_THREADS") or default_threads())

# Longer than the slowest request (a 50 MP image on CPU, or a full queue) and than the website's
# 100 s client timeout, so a slow request is never killed half-way.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "180"))
graceful_timeout = 60
keepalive = 5

# Recycle workers now and then (bounded memory over months), with jitter so they don't restart
# together.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "2000"))
max_requests_jitter = max(1, max_requests // 10)

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
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

    worker.wsgi.extensions["u2net"].runtime.on_failure(stop)
