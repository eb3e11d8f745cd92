"""Measuring a model.

ranking.py         full-KB ranking and metrics
records.py         the per-mention error-analysis record, its labels and its JSONL file
error_analysis.py  building those records from link results or a linker
score_dump.py      building them from a full-KB score dump (evaluate --scores-out)
summary.py         counts, metrics, reliability, filters and the comparison of two runs
tables.py          records and comparisons as pandas tables / CSV
figures.py         plotly figures of a summary or a comparison
cli.py             the `analyze` command
"""
