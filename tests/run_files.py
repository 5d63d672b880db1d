"""config.json as plain JSON, for tests that hand-craft the file or check what is in it (goushi itself reads
and writes it only through goushi.run_record)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_config(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))


def write_config(run_dir: str | Path, info: dict[str, Any]) -> None:
    (Path(run_dir) / "config.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
