"""Helpers for the tests and benchmarks, not the library's public API: a tiny randomly initialised
CLIP built on the spot (`tiny_clip.py`) and small synthetic multimodal datasets whose answers are
known (`synthetic.py`). Nothing in the library imports them."""
