"""The sources manifest (`sources.toml`): where every piece of text came from and who to credit.

```toml
[[source]]
id = "tang"
path = "poetry/tang.txt"          # a file, a folder (searched recursively) or a glob, relative to this file
url = "https://github.com/chinese-poetry/chinese-poetry"
author = "chinese-poetry contributors"
license = "MIT"
note = "Tang poems, converted to simplified characters"
weight = 1.0                      # optional: repeat (>1) or subsample (<1) this source's training documents
format = "auto"                   # reader options, all optional: auto|txt|jsonl|json|csv|tsv|srt|vtt|ass
separator = "auto"                # txt: auto (per file: blank lines if they separate documents, else one per
                                  # line) | blank | line | file | any literal line; subtitles: line = one
                                  # document per cue, otherwise one per file
field = "text"                    # jsonl/json: key holding the text (a list of keys is joined with newlines)
column = "text"                   # csv/tsv: column name
encoding = "utf-8"
t2s = false                       # convert traditional to simplified characters (needs OpenCC)
```
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from goushi.config import ConfigError, load_toml
from goushi.errors import GoushiError
from goushi.fsutil import atomic_write_text

FORMATS = ("auto", "txt", "jsonl", "json", "csv", "tsv", "srt", "vtt", "ass", "ssa")
TEXT_SUFFIXES = {".txt": "txt", ".md": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".json": "json", ".csv": "csv", ".tsv": "tsv", ".srt": "srt", ".vtt": "vtt", ".ass": "ass",
                 ".ssa": "ass"}
# What separates the documents of a text file (`--split-docs`); `separator` also takes any literal line.
SPLITS = ("auto", "blank", "line", "file")
# Files that travel with corpora but are not corpus text: never read them when a source is a folder.
_NOT_TEXT = re.compile(r"^(sources\.(toml|md)|readme|licen[cs]es?|copying|notice|authors|data_card\.md)(\..*)?$", re.I)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
UNKNOWN = "unknown"


@dataclass
class Source:
    id: str
    path: str
    url: str = ""
    author: str = ""
    license: str = ""
    note: str = ""
    weight: float = 1.0
    format: str = "auto"
    separator: str = "auto"
    field: str | list[str] = "text"
    column: str = "text"
    encoding: str = "utf-8"
    t2s: bool = False
    base_dir: Path = dataclasses.field(default=Path("."), repr=False, compare=False)

    @property
    def license_shown(self) -> str:
        return self.license.strip() or UNKNOWN

    def credit(self) -> dict[str, str]:
        """What a data card or model card must say about this source."""
        return {"license": self.license_shown, "author": self.author.strip() or UNKNOWN, "url": self.url.strip(),
                "note": self.note.strip()}

    def to_table(self) -> dict[str, Any]:
        """The manifest entry, without defaults, in a stable key order."""
        defaults = Source(id="", path="")
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "base_dir":
                continue
            v = getattr(self, f.name)
            if f.name in ("id", "path") or v != getattr(defaults, f.name):
                out[f.name] = v
        return out

    def files(self) -> list[Path]:
        """The files this source names, sorted; GoushiError if there are none."""
        where = f"source {self.id!r}"
        p = Path(self.path).expanduser()
        full = p if p.is_absolute() else self.base_dir / p
        if any(ch in self.path for ch in "*?["):
            matches = sorted(Path(m) for m in globlib.glob(str(full), recursive=True))
            found = [m for m in matches if m.is_file() and not _skipped(m, self.base_dir)]
            if not found:
                raise GoushiError(f"{where}: path {self.path!r} matches no files (looked in {self.base_dir})")
            return found
        if full.is_file():
            return [full]
        if full.is_dir():
            found = sorted(
                f for f in full.rglob("*")
                if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES and not _skipped(f, full)
            )
            if not found:
                raise GoushiError(f"{where}: folder {full} holds no text files "
                                  f"({', '.join(sorted(TEXT_SUFFIXES))}); point path at the files")
            return found
        raise GoushiError(f"{where}: path {full} not found; fix `path` in the manifest (it is relative to the manifest's folder)")


def _skipped(f: Path, base: Path) -> bool:
    """Licence texts, readmes, credits and hidden files below `base` are not corpus text."""
    try:
        parts = f.relative_to(base).parts
    except ValueError:
        parts = (f.name,)
    # ".." is a way up (a glob like "../corpus/*.txt"), not a hidden name
    return any((p.startswith(".") and p not in (".", "..")) or _NOT_TEXT.match(p) for p in parts)


def _check_source(d: Any, where: str, base_dir: Path) -> Source:
    if not isinstance(d, dict):
        raise GoushiError(f"{where}: expected a [[source]] table")
    known = [f.name for f in fields(Source) if f.name != "base_dir"]
    for k in d:
        if k not in known:
            raise GoushiError(f"{where}: unknown key {k!r}; known keys: {', '.join(known)}")
    for k in ("id", "path"):
        if k not in d:
            raise GoushiError(f"{where}: missing required key {k!r}")
    for k in ("id", "path", "url", "author", "license", "note", "format", "separator", "column", "encoding"):
        if k in d and not isinstance(d[k], str):
            raise GoushiError(f"{where}: {k}={d[k]!r} should be a string")
    if "separator" in d and not d["separator"].strip():
        raise GoushiError(f"{where}: separator={d['separator']!r} is empty; use one of {', '.join(SPLITS)} "
                          "or a literal separator line such as \"%%\"")
    sid = d["id"]
    if not _ID.match(sid):
        raise GoushiError(f"{where}: id={sid!r} should be letters, digits, '_', '-' or '.' (no spaces)")
    w = d.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
        raise GoushiError(f"{where}: weight={w!r} should be a number >= 0 (1 = as is, 2 = twice, 0.5 = half)")
    fmt = d.get("format", "auto")
    if fmt not in FORMATS:
        raise GoushiError(f"{where}: format={fmt!r} is not one of {', '.join(FORMATS)}")
    fld = d.get("field", "text")
    if not (isinstance(fld, str) or (isinstance(fld, list) and fld and all(isinstance(x, str) for x in fld))):
        raise GoushiError(f"{where}: field={fld!r} should be a key name or a list of key names")
    if "t2s" in d and not isinstance(d["t2s"], bool):
        raise GoushiError(f"{where}: t2s={d['t2s']!r} should be true or false")
    if "encoding" in d:
        _check_encoding(d["encoding"], where)
    return Source(**{**d, "weight": float(w)}, base_dir=base_dir)


def _check_encoding(name: str, where: str) -> None:
    import codecs

    try:
        codecs.lookup(name)
    except LookupError:
        raise GoushiError(f"{where}: encoding={name!r} is not a known text encoding (try utf-8 or gb18030)") from None


def load_manifest(path: str | Path) -> list[Source]:
    """Every source in `path`, checked; GoushiError on any unknown key or duplicate id."""
    path = Path(path)
    if path.is_dir():
        path = path / "sources.toml"
    if not path.is_file():
        raise GoushiError(f"{path}: sources manifest not found; create one with `goushi data add PATH --id ID ...` "
                          "or `goushi data get reviews --out DIR`")
    try:
        doc = load_toml(path)
    except ConfigError as e:
        raise GoushiError(str(e)) from None
    extra = sorted(set(doc) - {"source"})
    if extra:
        raise GoushiError(f"{path}: unknown top-level key {extra[0]!r}; each source is a [[source]] table")
    tables = doc.get("source", [])
    if not isinstance(tables, list):
        raise GoushiError(f"{path}: `source` must be an array of tables, written [[source]]")
    sources: list[Source] = []
    seen: set[str] = set()
    for i, t in enumerate(tables, 1):
        where = f"{path}: [[source]] #{i}" + (f" (id {t.get('id')!r})" if isinstance(t, dict) and "id" in t else "")
        s = _check_source(t, where, path.parent.resolve())
        if s.id in seen:
            raise GoushiError(f"{path}: duplicate source id {s.id!r}; every source needs its own id")
        seen.add(s.id)
        sources.append(s)
    return sources


def add_source(manifest: str | Path, path: str, *, id: str, **options: Any) -> Source:
    """Append one `[[source]]` to `manifest` (created if missing), atomically.

    `path` is stored relative to the manifest's folder when it lies inside it, so the folder can move.
    """
    manifest = Path(manifest)
    existing = load_manifest(manifest) if manifest.exists() else []
    if any(s.id == id for s in existing):
        raise GoushiError(f"{manifest}: already has a source with id {id!r}; choose another --id")
    base = manifest.parent.resolve()
    p = Path(path).expanduser()
    full = p if p.is_absolute() else Path.cwd() / p
    try:
        stored = full.resolve().relative_to(base).as_posix() if not any(c in path for c in "*?[") else path
    except ValueError:
        stored = str(full.resolve())
    entry = {"id": id, "path": stored, **{k: v for k, v in options.items() if v is not None}}
    src = _check_source(entry, f"{manifest}: new source {id!r}", base)
    src.files()  # refuse a path that names nothing now rather than at build time
    body = manifest.read_text(encoding="utf-8") if manifest.exists() else ""
    if body and not body.endswith("\n"):
        body += "\n"
    body += ("\n" if body else "") + source_toml(src)
    atomic_write_text(manifest, body)
    return src


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def source_toml(src: Source) -> str:
    """One `[[source]]` table as TOML text."""
    return "[[source]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in src.to_table().items())


def write_manifest(path: str | Path, sources: list[Source]) -> None:
    atomic_write_text(path, "\n".join(source_toml(s) for s in sources))


__all__ = ["Source", "load_manifest", "add_source", "write_manifest", "FORMATS", "TEXT_SUFFIXES", "SPLITS", "UNKNOWN"]
