"""Retraining from the annotators' corrections: the one place that joins the model library
(`mimic`) and the annotation store (`db`). The app only starts and watches it."""
