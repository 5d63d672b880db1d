"""Read documents out of text, subtitle, JSONL, JSON and CSV files, streaming, with errors that say where.

Files are decoded in chunks with an incremental decoder so a bad byte is reported with its
file offset, and no file is ever loaded whole (except `.json`, which has no streaming form, and
subtitles, which are small and need the whole file to put cues in screen order).

How a text file is cut into documents is decided per file (`plan_file`, recorded in the data card):
`separator = "auto"` (the default) reads the file once, counting its non-blank lines and its
paragraphs (runs of non-blank lines between blank lines), then

- no blank line between two lines of text: one document per line (a collected corpus, one text a line),
  except in a source of several files, where a file of at most STRAY_BLANK_LINES lines is one text
  (a folder with a poem or a joke per file);
- blank lines, and paragraphs of at most STRAY_BLANK_LINES non-blank lines on average: one document per
  paragraph (poems with title, author and verses; multi-line jokes; one text a paragraph);
- blank lines, but paragraphs longer than that on average: the blank lines are strays in a one-text-a-line
  file, and splitting on them would make a handful of huge documents (and an empty or tiny validation
  split), so one document per line again.

`blank`, `line`, `file` or any literal separator line force the choice.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goushi.data import subtitles
from goushi.data.sources import SPLITS, TEXT_SUFFIXES, Source
from goushi.errors import GoushiError

CHUNK = 1 << 20
# Paragraphs averaging more non-blank lines than this are not documents: see the module docstring.
STRAY_BLANK_LINES = 40
_MAGIC = {b"\x89PNG": "a PNG image", b"%PDF": "a PDF", b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "a gzip archive",
          b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"\x7fELF": "a program", b"SQLite format 3": "a SQLite database",
          b"7z\xbc\xaf": "a 7z archive", b"Rar!": "a RAR archive", b"BZh": "a bzip2 archive", b"\xfd7zXZ": "an xz archive"}


def _wide(encoding: str) -> bool:
    name = codecs.lookup(encoding).name
    return name.startswith(("utf-16", "utf-32"))


def _encoding_hint(encoding: str) -> str:
    if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig"):
        return ("; if it is GBK/GB2312 text pass --encoding gb18030 (or set encoding = \"gb18030\" for this "
                "source in sources.toml)")
    return "; check the file's real encoding and set it with --encoding or the manifest's `encoding` key"


def iter_text(path: Path, encoding: str = "utf-8") -> Iterator[str]:
    """Decoded chunks of `path`. GoushiError for a missing, unreadable, binary or mis-encoded file."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise GoushiError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise GoushiError(f"{path}: is a folder, expected a file") from None
    except OSError as e:
        raise GoushiError(f"{path}: cannot read ({e.strerror}); check its permissions") from None
    with f:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        offset = 0
        first = True
        while True:
            try:
                chunk = f.read(CHUNK)
            except OSError as e:
                raise GoushiError(f"{path}: cannot read ({e.strerror})") from None
            if first:
                _refuse_binary(path, chunk, encoding)
                if chunk.startswith(codecs.BOM_UTF8) and codecs.lookup(encoding).name == "utf-8":
                    chunk, offset = chunk[3:], 3
                first = False
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                pending = len(decoder.getstate()[0]) if hasattr(decoder, "getstate") else 0
                at = max(0, offset - pending + e.start)
                raise GoushiError(f"{path}: not valid {encoding} at byte {at}{_encoding_hint(encoding)}") from None
            offset += len(chunk)
            if text:
                yield text
            if not chunk:
                return


def _refuse_binary(path: Path, head: bytes, encoding: str) -> None:
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise GoushiError(f"{path}: is {what}, not text; remove it from the source or point `path` at text files")
    if not _wide(encoding) and b"\x00" in head[:8192]:
        raise GoushiError(f"{path}: looks binary (contains NUL bytes), not text; remove it from the source "
                          "(or, if it is UTF-16 text, set encoding = \"utf-16\")")


def iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[str]:
    """Lines of `path`, each ending in `\\n`; CR LF and lone CR count as line ends too."""
    rest = ""
    for text in iter_text(path, encoding):
        text = rest + text
        hold_cr = text.endswith("\r")  # may be the first half of a CR LF split across chunks
        if hold_cr:
            text = text[:-1]
        parts = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        rest = parts.pop() + ("\r" if hold_cr else "")
        for line in parts:
            yield line + "\n"
    if rest:
        yield rest.replace("\r", "\n") if rest.endswith("\r") else rest


def scan_txt(path: Path, encoding: str = "utf-8") -> tuple[int, int]:
    """(non-blank lines, paragraphs) of a text file; a paragraph is a run of non-blank lines."""
    lines = paragraphs = 0
    in_paragraph = False
    for line in iter_lines(path, encoding):
        if line.strip():
            lines += 1
            paragraphs += not in_paragraph
            in_paragraph = True
        else:
            in_paragraph = False
    return lines, paragraphs


def decide_split(lines: int, paragraphs: int, files: int = 1) -> tuple[str, str]:
    """(separator, why) for a text file with these counts, in a source of `files` files: the `auto` rule of
    the module docstring."""
    if paragraphs <= 1:
        if lines <= 1:
            return "line", "a single line of text"
        if files > 1 and lines <= STRAY_BLANK_LINES:
            return "file", f"{lines:,} lines without a blank line, in a source of {files:,} files"
        return "line", f"no blank line between its {lines:,} lines"
    per = lines / paragraphs
    if per > STRAY_BLANK_LINES:
        return "line", (f"only {paragraphs - 1:,} blank-line breaks among {lines:,} lines (one per {per:,.0f} lines): "
                        "stray blank lines")
    return "blank", f"{paragraphs:,} paragraphs, {per:.1f} lines each on average"


def read_txt(path: Path, separator: str = "auto", encoding: str = "utf-8") -> Iterator[str]:
    if separator == "auto":
        separator = decide_split(*scan_txt(path, encoding))[0]
    if separator == "file":
        yield "".join(iter_lines(path, encoding))
        return
    if separator == "line":
        for line in iter_lines(path, encoding):
            if line.strip():
                yield line.rstrip("\n")
        return
    buf: list[str] = []
    for line in iter_lines(path, encoding):
        is_break = not line.strip() if separator == "blank" else line.strip() == separator
        if is_break:
            if buf:
                yield "".join(buf).rstrip("\n")
            buf = []
        else:
            buf.append(line)
    if buf:
        yield "".join(buf).rstrip("\n")


def _field_text(obj: object, fld: str | list[str], where: str) -> str | None:
    if not isinstance(obj, dict):
        raise GoushiError(f"{where}: expected a JSON object {{...}}, got {type(obj).__name__}")
    parts: list[str] = []
    for key in [fld] if isinstance(fld, str) else fld:
        if key not in obj:
            raise GoushiError(f"{where}: no field {key!r} (fields here: {', '.join(map(str, obj)) or 'none'}); "
                              "set `field` for this source in sources.toml")
        v = obj[key]
        if v is None:
            continue
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            v = "\n".join(v)
        if not isinstance(v, str):
            raise GoushiError(f"{where}: field {key!r} holds {type(v).__name__}, not text")
        parts.append(v)
    return "\n".join(parts) if parts else None


def read_jsonl(path: Path, fld: str | list[str] = "text", encoding: str = "utf-8") -> Iterator[str]:
    for n, line in enumerate(iter_lines(path, encoding), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GoushiError(f"{path}:{n}: malformed JSON line ({e.msg} at column {e.colno}); "
                              "fix or delete that line") from None
        text = _field_text(obj, fld, f"{path}:{n}")
        if text is not None:
            yield text


def read_json(path: Path, fld: str | list[str] = "text", encoding: str = "utf-8") -> Iterator[str]:
    raw = "".join(iter_text(path, encoding))
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise GoushiError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise GoushiError(f"{path}: expected a JSON array of objects")
    for i, obj in enumerate(data):
        text = _field_text(obj, fld, f"{path}: item {i}")
        if text is not None:
            yield text


def read_csv(path: Path, column: str = "text", encoding: str = "utf-8", delimiter: str = ",") -> Iterator[str]:
    reader = csv.reader(iter_lines(path, encoding), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise GoushiError(f"{path}:1: malformed CSV ({e})") from None
    if column in header:
        idx = header.index(column)
    elif column.isdigit() and int(column) < len(header):
        idx = int(column)
    else:
        raise GoushiError(f"{path}: no column {column!r} (columns: {', '.join(header)}); set `column` for this source")
    try:
        for row in reader:
            if idx < len(row) and row[idx].strip():
                yield row[idx]
    except csv.Error as e:
        raise GoushiError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def file_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return "ass" if fmt == "ssa" else fmt
    return TEXT_SUFFIXES.get(path.suffix.lower(), "txt")


@dataclass
class FilePlan:
    """How one file is read: its format and, for text and subtitles, what separates its documents."""

    path: Path
    format: str
    separator: str | None  # txt: auto's choice or the forced one; subtitles: file|line; None for record formats
    chosen_by: str  # "auto", "manifest" (the source's `separator`), "--split-docs", or "format"
    reason: str
    encoding: str
    lines: int | None = None  # txt: non-blank lines
    paragraphs: int | None = None  # txt: runs of non-blank lines
    docs: int | None = None  # documents read, before cleaning (filled in as the file is read)

    def expected_docs(self) -> int | None:
        """Documents the file will yield, when its counts say so without reading it again."""
        if self.lines is None:
            return None
        if self.separator == "line":
            return self.lines
        if self.separator == "blank":
            return self.paragraphs
        if self.separator == "file":
            return int(self.lines > 0)
        return None

    def describe(self) -> str:
        """One phrase for messages and the data card: how this file became documents."""
        if self.format == "txt":
            how = {"line": "one document per line", "blank": "one document per blank-line-separated paragraph",
                   "file": "the whole file as one document"}.get(self.separator or "",
                                                                  f"documents separated by lines {self.separator!r}")
            return f"{how} ({self.reason})" if self.chosen_by == "auto" else f"{how} (set by {self.chosen_by})"
        return self.reason

    def to_dict(self) -> dict[str, Any]:
        d = {"path": str(self.path), "format": self.format, "separator": self.separator, "chosen_by": self.chosen_by,
             "reason": self.reason, "encoding": self.encoding, "docs": self.docs}
        if self.lines is not None:
            d.update(lines=self.lines, paragraphs=self.paragraphs)
        return d


def _read_whole(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise GoushiError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise GoushiError(f"{path}: is a folder, expected a file") from None
    except OSError as e:
        raise GoushiError(f"{path}: cannot read ({e.strerror}); check its permissions") from None
    wide = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    _refuse_binary(path, data[:8192], "utf-16" if wide else "utf-8")
    return data


def subtitle_cues(path: Path, fmt: str, encoding: str = "utf-8") -> tuple[list[str], str]:
    """(cues, encoding used) of a subtitle file; see goushi.data.subtitles."""
    text, used = subtitles.decode(_read_whole(path), str(path), encoding)
    return subtitles.parse(text, fmt, str(path)), used


def plan_file(path: Path, *, format: str = "auto", separator: str = "auto", encoding: str = "utf-8",
              chosen_by: str | None = None, files: int = 1) -> FilePlan:
    """Decide how `path`, one of a source's `files` files, is read. Text files are scanned once (counts for
    `auto` and for the data card); subtitles are decoded once to settle their encoding."""
    fmt = file_format(path, format)
    by = chosen_by or ("auto" if separator == "auto" else "manifest")
    if fmt == "txt":
        lines, paragraphs = scan_txt(path, encoding)
        if separator == "auto":
            sep, why = decide_split(lines, paragraphs, files)
        else:
            sep, why = separator, f"separator {separator!r}"
        return FilePlan(path, fmt, sep, by, why, encoding, lines, paragraphs)
    if fmt in subtitles.SUBTITLE_FORMATS:
        _, used = subtitle_cues(path, fmt, encoding)
        if separator == "line":
            return FilePlan(path, fmt, "line", by, "subtitles: one document per cue", used)
        return FilePlan(path, fmt, "file", "format" if separator == "auto" else by,
                        "subtitles: the whole file is one document, cues joined with newlines", used)
    unit = {"jsonl": "line", "json": "array item", "csv": "row", "tsv": "row"}.get(fmt)
    if unit is None:
        raise GoushiError(f"{path}: unknown format {fmt!r}")
    return FilePlan(path, fmt, None, "format", f"{fmt}: one document per {unit}", encoding)


def read_plan(plan: FilePlan, *, field: str | list[str] = "text", column: str = "text") -> Iterator[str]:
    """Documents of one planned file, as raw (uncleaned) strings."""
    path, fmt, enc = plan.path, plan.format, plan.encoding
    if fmt == "txt":
        return read_txt(path, plan.separator or "auto", enc)
    if fmt in subtitles.SUBTITLE_FORMATS:
        return _read_subtitles(plan)
    if fmt == "jsonl":
        return read_jsonl(path, field, enc)
    if fmt == "json":
        return read_json(path, field, enc)
    if fmt in ("csv", "tsv"):
        return read_csv(path, column, enc, delimiter="\t" if fmt == "tsv" else ",")
    raise GoushiError(f"{path}: unknown format {fmt!r}")


def _read_subtitles(plan: FilePlan) -> Iterator[str]:
    cues, _ = subtitle_cues(plan.path, plan.format, plan.encoding)
    if plan.separator == "line":
        yield from cues
    elif cues:
        yield "\n".join(cues)


def read_file(path: Path, *, format: str = "auto", separator: str = "auto", field: str | list[str] = "text",
              column: str = "text", encoding: str = "utf-8") -> Iterator[str]:
    """Documents in one file, as raw (uncleaned) strings."""
    fmt = file_format(path, format)
    if fmt == "txt":  # no plan needed: read_txt settles `auto` itself
        return read_txt(path, separator, encoding)
    return read_plan(plan_file(path, format=fmt, separator=separator, encoding=encoding), field=field, column=column)


def plan_source(src: Source, encoding: str | None = None, split_docs: str | None = None, *,
                on_file: Callable[[Path], None] | None = None) -> list[FilePlan]:
    """A plan for every file of a source. `encoding` and `split_docs` (auto|blank|line|file) override the
    manifest's `encoding` and `separator` for every file. `on_file(path)` is called as each file is planned
    (for a progress bar: a text file is read through once here)."""
    if split_docs is not None and split_docs not in SPLITS:
        raise GoushiError(f"--split-docs {split_docs!r}: choose one of {', '.join(SPLITS)}")
    sep = split_docs or src.separator
    by = "--split-docs" if split_docs and split_docs != "auto" else ("auto" if sep == "auto" else "manifest")
    paths = src.files()
    plans = []
    for p in paths:
        plans.append(plan_file(p, format=src.format, separator=sep, encoding=encoding or src.encoding, chosen_by=by,
                               files=len(paths)))
        if on_file is not None:
            on_file(p)
    return plans


def count_docs(plan: FilePlan, src: Source, limit: int) -> int:
    """Documents in a planned file, counting no further than `limit` (the counts of a scanned text file
    answer without reading it again)."""
    known = plan.expected_docs()
    if known is not None:
        return min(known, limit)
    return sum(1 for _ in itertools.islice(read_plan(plan, field=src.field, column=src.column), limit))


def read_source(src: Source, encoding: str | None = None, *, split_docs: str | None = None,
                plans: list[FilePlan] | None = None) -> Iterator[tuple[Path, str]]:
    """(file, raw document) for every document of a source; `encoding` overrides the manifest's.
    With `plans` (from plan_source), each plan's `docs` is set to the number of documents read."""
    for plan in plans if plans is not None else plan_source(src, encoding, split_docs):
        plan.docs = 0
        for doc in read_plan(plan, field=src.field, column=src.column):
            plan.docs += 1
            yield plan.path, doc


__all__ = ["iter_text", "iter_lines", "read_txt", "read_jsonl", "read_json", "read_csv", "read_file", "read_source",
           "scan_txt", "decide_split", "FilePlan", "plan_file", "plan_source", "read_plan", "count_docs",
           "subtitle_cues", "STRAY_BLANK_LINES"]
