"""Goushi GPT (狗屎GPT): train your own small Chinese GPT from your own text.

The public API in a few names, imported lazily so `import goushi` stays cheap:

    from goushi import Engine, SampleConfig, GPT, ModelConfig, Tokenizer, load_run
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "GPT": "goushi.model",
    "ModelConfig": "goushi.config",
    "preset_config": "goushi.config",
    "Tokenizer": "goushi.tokenizer",
    "load_run": "goushi.checkpoint",
    "Engine": "goushi.engine",
    "SampleConfig": "goushi.engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'goushi' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
