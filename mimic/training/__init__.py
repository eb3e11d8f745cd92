"""Training: the loop (`trainer.py`: frozen-feature cache, DDP, resume) and the decode-once input
cache used when the backbone is trained (`input_cache.py`)."""
