"""U²-Net for background removal: the network, its weights, and inference.

Importable as `u2net` (pyproject.toml maps the package onto this folder). Its names are imported
lazily (PEP 562), so that `import u2net.registry` or `u2net.atomic` (the settings, the shared
root's paths) does not load torch; `from u2net import U2NET` still works.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "U2NET": "model", "U2NETP": "model", "U2Net": "model",
    "DEFAULT_MODEL": "registry", "MODELS": "registry", "ModelSpec": "registry",
    "UnknownModel": "registry", "get_spec": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
