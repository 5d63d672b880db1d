"""Evaluation: bits per character on held-out text, generation diversity, provenance, model card, report.

    goushi.eval.metrics     sliding-window loss/ppl/bpc/bpb, distinct-n, repetition, memorisation rate
    goushi.eval.provenance  which spans of a text were copied verbatim from the training data, and from whom
    goushi.eval.report      one self-contained HTML page per run (`goushi report`)

write_model_card and refresh_model_card are goushi.model_card's, handed on here: the card depends only on the
run format, so it sits below both training and evaluation.

Submodules are imported on use, so `import goushi.eval` pulls in neither torch nor matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "evaluate_files": "goushi.eval.metrics",
    "score_documents": "goushi.eval.metrics",
    "generation_metrics": "goushi.eval.metrics",
    "distinct_n": "goushi.eval.metrics",
    "repeated_ngram_rate": "goushi.eval.metrics",
    "provenance_for_run": "goushi.eval.provenance",
    "write_model_card": "goushi.model_card",
    "refresh_model_card": "goushi.model_card",
    "write_report": "goushi.eval.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'goushi.eval' has no attribute {name!r}")


__all__ = list(_LAZY)
