"""A gunicorn app whose model fails to warm up, as CUDA running out of memory would make it: the
real app and runtime, with a network that raises. Used by tests/test_server.py (not a test module)."""
from conftest import FaultyPredictor
from u2net.runtime import ModelRuntime

from API import create_app
from GlobalVariables import Settings

settings = Settings.from_env()
loaded = ModelRuntime.load(settings.runtime_options())
network = FaultyPredictor(loaded.predictor, "CUDA out of memory (simulated)", broken=True)
runtime = ModelRuntime(loaded.spec, loaded.weights_path, network, loaded.options,
                       loaded.weights_sha256)
loaded.close()
app = create_app(settings, runtime=runtime)
runtime.start()
