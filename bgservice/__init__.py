"""The service's core, free of Flask: shared-root paths, image I/O, the cut-out pipeline, errors.

API.py (HTTP) and the command line both call into this package; neither has a pipeline of its own.
The Python API (`from bgservice import remove, new_session`; bgservice.library) is imported on
first use, so that importing the package for its settings or logging stays light.
"""

_LIBRARY = ("remove", "new_session", "Session")
__all__ = list(_LIBRARY)


def __getattr__(name: str):
    if name in _LIBRARY:
        from . import library

        return getattr(library, name)
    raise AttributeError(f"module 'bgservice' has no attribute {name!r}")
