"""Serving a model: the KB index (`index.py`), retrieve-then-rerank linking and explanations
(`linker.py`), the zero-shot ranking by backbone similarities (`zeroshot.py`), and the
`LinkingService` the app holds (`service.py`: served model + index, KB edits, hot swaps)."""
