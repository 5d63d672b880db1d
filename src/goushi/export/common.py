"""What every export shares: refusing to overwrite without --force, and the model card that travels with the
weights (the run's MODEL_CARD.md with its sources and licences, under a Hugging Face YAML header, plus how
to load the exported files)."""

from __future__ import annotations

from pathlib import Path

import goushi
from goushi import rundir
from goushi.errors import GoushiError
from goushi.model_card import record_card_inputs, render_model_card
from goushi.run_record import RunRecord

# Hugging Face licence identifiers for the licences our sources most often carry.
_HF_LICENSES = {"MIT": "mit", "APACHE-2.0": "apache-2.0", "CC0-1.0": "cc0-1.0", "CC-BY-4.0": "cc-by-4.0",
                "CC-BY-SA-4.0": "cc-by-sa-4.0", "CC-BY-NC-4.0": "cc-by-nc-4.0", "CC-BY-NC-SA-4.0": "cc-by-nc-sa-4.0",
                "BSD-3-CLAUSE": "bsd-3-clause", "GPL-3.0": "gpl-3.0", "UNLICENSE": "unlicense"}


def check_out(out: Path, *, force: bool, kind: str) -> None:
    """Refuse to overwrite an existing export unless --force (checked before any work is done)."""
    if out.exists() and not force:
        raise GoushiError(f"--out {out}: already exists; pass --force to replace it, or choose another --out")
    if out.exists() and kind == "directory" and not out.is_dir():
        raise GoushiError(f"--out {out}: exists and is not a directory; choose another --out")
    if out.exists() and kind == "file" and out.is_dir():
        raise GoushiError(f"--out {out}: is a directory; give a file name such as {out / 'model.gguf'}")


def hf_license(record: RunRecord) -> str:
    """One licence identifier when every source shares one Hugging Face knows, else "other" (see the card)."""
    found = {str(s.get("license") or "unknown").strip().upper() for s in record.all_sources().values()}
    if len(found) == 1:
        return _HF_LICENSES.get(found.pop(), "other")
    return "other"


def run_card(run_dir: Path, record: RunRecord) -> str:
    """The run's own MODEL_CARD.md, or one rendered from its record when the run has none."""
    card = run_dir / rundir.MODEL_CARD
    if card.is_file():
        return card.read_text(encoding="utf-8")
    return render_model_card(run_dir.resolve().name, **record_card_inputs(run_dir, record))


def export_card(run_dir: Path, record: RunRecord, *, family: str, how_to_use: list[str]) -> str:
    """README.md for an export: YAML header, the run's card, and how to load this export."""
    header = ["---", "language:", "- zh", f"license: {hf_license(record)}", "library_name: transformers",
              "pipeline_tag: text-generation", "tags:", "- goushi", f"- {family}", "---", ""]
    note = ["", "## This export", "",
            f"Exported by goushi {goushi.__version__} from the run `{run_dir.resolve().name}`. The sources and "
            "licences above travel with the weights: keep this card beside them when you share the model.", ""]
    return "\n".join(header) + run_card(run_dir, record).rstrip("\n") + "\n" + "\n".join(note + how_to_use) + "\n"


__all__ = ["check_out", "hf_license", "run_card", "export_card"]
