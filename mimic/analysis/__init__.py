"""Measuring a model: full-KB ranking and metrics (`ranking.py`) and error analysis of its answers
(`error_analysis.py`: per-mention labels, summaries, comparisons)."""
