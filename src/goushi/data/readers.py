"""Read documents out of text, JSONL, JSON and CSV files, streaming, with errors that say where.

Files are decoded in chunks with an incremental decoder so a bad byte is reported with its
file offset, and no file is ever loaded whole (except `.json`, which has no streaming form).
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from pathlib import Path

from goushi.data.sources import TEXT_SUFFIXES, Source
from goushi.errors import GoushiError

CHUNK = 1 << 20
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


def read_txt(path: Path, separator: str = "blank", encoding: str = "utf-8") -> Iterator[str]:
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
        return fmt
    return TEXT_SUFFIXES.get(path.suffix.lower(), "txt")


def read_file(path: Path, *, format: str = "auto", separator: str = "blank", field: str | list[str] = "text",
              column: str = "text", encoding: str = "utf-8") -> Iterator[str]:
    """Documents in one file, as raw (uncleaned) strings."""
    fmt = file_format(path, format)
    if fmt == "txt":
        return read_txt(path, separator, encoding)
    if fmt == "jsonl":
        return read_jsonl(path, field, encoding)
    if fmt == "json":
        return read_json(path, field, encoding)
    if fmt in ("csv", "tsv"):
        return read_csv(path, column, encoding, delimiter="\t" if fmt == "tsv" else ",")
    raise GoushiError(f"{path}: unknown format {fmt!r}")


def read_source(src: Source, encoding: str | None = None) -> Iterator[tuple[Path, str]]:
    """(file, raw document) for every document of a source; `encoding` overrides the manifest's."""
    enc = encoding or src.encoding
    for path in src.files():
        for doc in read_file(path, format=src.format, separator=src.separator, field=src.field,
                             column=src.column, encoding=enc):
            yield path, doc


__all__ = ["iter_text", "iter_lines", "read_txt", "read_jsonl", "read_json", "read_csv", "read_file", "read_source"]
