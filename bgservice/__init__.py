"""The service's core, free of Flask: shared-root paths, image I/O, the cut-out pipeline, errors.

API.py (HTTP) and the command line both call into this package; neither has a pipeline of its own.
"""
