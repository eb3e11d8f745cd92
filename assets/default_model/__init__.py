"""Builds the app's default checkpoint in `assets/models/default/` (MIMIC heads on the frozen
offline backbone, trained on synthetic mentions of the demo KB). Not part of the library: run
`python -m assets.default_model` to rebuild it."""
