"""Production server settings: `gunicorn -c gunicorn_conf.py` (the Dockerfile's command).

Nothing here imports torch: the master process must never touch CUDA. Each worker builds the app
(and loads the model) itself after fork, because preload_app is off.
"""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '5002')}"
wsgi_app = "API:create_app()"
preload_app = False  # load the model in each worker, after fork (CUDA-safe)

# One worker holds one copy of the model; its threads share it through the dynamic batcher, and
# decode/encode in parallel while the network runs. More workers only pay off with spare cores.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))

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
