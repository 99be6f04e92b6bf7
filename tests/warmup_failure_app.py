"""A gunicorn app whose model fails to warm up, as CUDA running out of memory would make it: the
real app and runtime, with a network that raises. Used by tests/test_server.py (not a test module)."""
from u2net.runtime import ModelRuntime

from API import create_app
from GlobalVariables import Settings


class OutOfMemory:
    def __init__(self, inner):
        self.device, self.precision, self.engine = inner.device, inner.precision, inner.engine

    def __call__(self, batch):
        raise RuntimeError("CUDA out of memory (simulated)")


settings = Settings.from_env()
loaded = ModelRuntime.load(settings.runtime_options())
runtime = ModelRuntime(loaded.spec, loaded.weights_path, OutOfMemory(loaded.predictor),
                       loaded.options, loaded.weights_sha256)
loaded.close()
app = create_app(settings, runtime=runtime)
runtime.start()
