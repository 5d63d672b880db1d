"""The web page (`goushi ui`): generate, chat, inspect tokens / probabilities / attention, read the model card.

Importing this package imports Gradio and the engine (torch); the CLI imports it only when `goushi ui` runs.
Layers: models (runs and their shared engines) -> handlers (what each button does, through the Engine only)
-> app (layout and wiring); views draw, card reads a run's files through goushi.rundir.
"""

from __future__ import annotations

import os

# Before Gradio is imported: no usage statistics or version checks leave this machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from goushi.ui.app import build_app  # noqa: E402
from goushi.ui.models import ModelRegistry  # noqa: E402
from goushi.ui.server import serve  # noqa: E402

__all__ = ["build_app", "serve", "ModelRegistry"]
