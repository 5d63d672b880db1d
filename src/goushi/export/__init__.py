"""Runs in and out of other programs' formats: Hugging Face `transformers` directories (both ways) and
GGUF files for llama.cpp / Ollama. The tensor mapping itself lives in `goushi.hf`."""

from goushi.export.gguf import GGUF_TYPES, export_gguf
from goushi.export.hf_export import export_hf
from goushi.export.hf_import import import_hf

__all__ = ["GGUF_TYPES", "export_gguf", "export_hf", "import_hf"]
