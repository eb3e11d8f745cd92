"""MIMIC Studio model library: backbones, the MIMIC model, data formats, training and evaluation.

No UI code lives here (the Gradio app is in `app/`).
"""

__version__ = "0.1.0"
