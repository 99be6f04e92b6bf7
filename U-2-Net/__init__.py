"""U²-Net for background removal: the network, its weights, and inference.

Importable as `u2net` (pyproject.toml maps the package onto this folder).
"""
from .model import U2NET, U2NETP, U2Net
from .registry import DEFAULT_MODEL, MODELS, ModelSpec, UnknownModel, get_spec

__all__ = [
           "DEFAULT_MODEL",
           "MODELS",
           "U2NET",
           "U2NETP",
           "ModelSpec",
           "U2Net",
           "UnknownModel",
           "get_spec",
]
