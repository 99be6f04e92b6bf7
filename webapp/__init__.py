"""The HTTP layer's own files, next to API.py: the OpenAPI description and the web page.

Nothing in the core (bgservice, u2net) imports this package; tests/test_structure.py checks it.
"""
