"""Builds the demo knowledge base in `assets/demo_kb/` (drawings, sample photos, entities, example
mentions). Not part of the library: run `python -m assets.demo_builder` to regenerate."""
