"""Subtitle files (`.srt`, `.vtt`, `.ass`/`.ssa`) as plain dialogue text.

What is kept is what a viewer reads: the text of every cue, one cue per line group, in screen order.
Dropped: cue numbers and identifiers, timing lines, the WEBVTT header and its NOTE/STYLE/REGION blocks,
the ASS/SSA [Script Info], [V4+ Styles], [Fonts] and [Graphics] sections, `Comment:` events, override
blocks such as `{\\an8}` (and vector drawings between `{\\p1}` and `{\\p0}`), HTML-like tags such as `<i>`,
`<font color=...>`, `<v Speaker>`, karaoke timestamps and ruby annotations (`<rt>...</rt>`).

A cue repeated in the next cue (a line held across two timings, or the same line drawn on two layers
for an outline effect) is kept once. Pure parsing on decoded text; `goushi.data.readers` does the file
reading and turns the cues into documents (one file = one document, cues joined with newlines, or one
document per cue).
"""

from __future__ import annotations

import codecs
import html
import re

from goushi.errors import GoushiError

SUBTITLE_FORMATS = ("srt", "vtt", "ass")
_TIMING = re.compile(r"^\s*(?:\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}\s*-->\s*(?:\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}")
_RUBY_TEXT = re.compile(r"<rt\b[^<>]*>.*?</rt\s*>", re.S | re.I)
_OVERRIDE = re.compile(r"\{\\[^{}]*\}")
# Tags start with an ASCII letter (or are a karaoke timestamp), so "<3" or 《书名》-like text survives.
_TAG = re.compile(r"</?[A-Za-z][^<>\n]*>|<(?:\d+:)?\d{2}:\d{2}\.\d{3}>")
_ASS_BLOCK = re.compile(r"(\{[^{}]*\})")
_ASS_DRAWING = re.compile(r"\\p(\d+)")
_ASS_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")
# The ASS and SSA v4 event formats, used when an [Events] section has no Format line.
_ASS_DEFAULT_FORMAT = ["layer", "start", "end", "style", "name", "marginl", "marginr", "marginv", "effect", "text"]
_VTT_SKIP = ("NOTE", "STYLE", "REGION")


def decode(data: bytes, where: str, encoding: str = "utf-8") -> tuple[str, str]:
    """(text, encoding used). A byte-order mark decides; otherwise UTF-8, then GB18030 (Chinese subtitles
    are often GBK), unless the source names another encoding, which is then the only one tried."""
    if data.startswith(codecs.BOM_UTF8):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError as e:
            raise GoushiError(f"{where}: starts with a UTF-8 byte-order mark but is not valid UTF-8 at byte "
                              f"{e.start + 3}; re-save it as UTF-8") from None
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(enc), enc
            except UnicodeDecodeError as e:
                raise GoushiError(f"{where}: starts with a {enc.upper()} byte-order mark but is not valid {enc} "
                                  f"at byte {e.start}; re-save it as UTF-8") from None
    if codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError as e:
            raise GoushiError(f"{where}: not valid {encoding} at byte {e.start}; check the file's real encoding and "
                              "set it with --encoding or the manifest's `encoding` key") from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        utf8_at = e.start
    try:
        return data.decode("gb18030"), "gb18030"
    except UnicodeDecodeError as e:
        raise GoushiError(f"{where}: neither UTF-8 (bad byte at {utf8_at}) nor GB18030 (bad byte at {e.start}); "
                          "convert it to UTF-8 or set `encoding` for this source (e.g. big5 or utf-16)") from None


def _blocks(text: str) -> list[list[str]]:
    """Runs of non-blank lines (line ends already normalised by str.splitlines)."""
    blocks: list[list[str]] = []
    cur: list[str] = []
    for line in text.splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def clean_cue(text: str) -> str:
    """Cue text without tags, entities decoded, lines stripped, empty lines dropped."""
    text = _RUBY_TEXT.sub("", text)
    text = _OVERRIDE.sub("", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    return "\n".join(s for s in (line.strip() for line in text.split("\n")) if s)


def _timed_cues(blocks: list[list[str]], *, continue_untimed: bool) -> list[str]:
    """Cue texts of SRT/VTT blocks: the lines after each timing line. Lines before a timing line in its block
    are cue numbers or identifiers. `continue_untimed`: a block without a timing line is the rest of the cue
    before it (SRT cue text may hold a blank line); otherwise it is skipped."""
    cues: list[list[str]] = []
    for block in blocks:
        timed = [i for i, line in enumerate(block) if _TIMING.match(line)]
        if not timed:
            if continue_untimed and cues and not all(line.strip().isdigit() for line in block):
                cues[-1] += [""] + block
            continue
        for k, i in enumerate(timed):
            end = timed[k + 1] if k + 1 < len(timed) else len(block)
            body = block[i + 1:end]
            # Two cues with no blank line between them: the number of the second one ends the first.
            if k + 1 < len(timed) and body and body[-1].strip().isdigit():
                body = body[:-1]
            cues.append(body)
    return [clean_cue("\n".join(c)) for c in cues]


def parse_srt(text: str) -> list[str]:
    return dedupe(_timed_cues(_blocks(text), continue_untimed=True))


def parse_vtt(text: str) -> list[str]:
    blocks = _blocks(text)
    if blocks and blocks[0][0].lstrip("\ufeff").startswith("WEBVTT"):
        blocks = blocks[1:]
    kept = [b for b in blocks if not _vtt_meta(b)]
    return dedupe(_timed_cues(kept, continue_untimed=False))


def _vtt_meta(block: list[str]) -> bool:
    """A NOTE (comment), STYLE or REGION block: no timing line, first word the block's kind."""
    first = block[0].split(maxsplit=1)
    return bool(first) and first[0] in _VTT_SKIP and not any(_TIMING.match(x) for x in block)


def _ass_seconds(value: str) -> float | None:
    m = _ASS_TIME.match(value)
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None


def _ass_text(text: str) -> str:
    out: list[str] = []
    drawing = False
    for piece in _ASS_BLOCK.split(text):
        if piece.startswith("{") and piece.endswith("}"):
            # Override blocks (and {comments}) are not shown; \p1..\pN switch to vector drawing commands
            # ("m 0 0 l 100 0 ...") until \p0.
            scales = _ASS_DRAWING.findall(piece)
            if scales:
                drawing = int(scales[-1]) != 0
            continue
        if not drawing:
            out.append(piece)
    shown = "".join(out).replace("\\N", "\n").replace("\\n", "\n").replace("\\h", " ")
    return clean_cue(shown)


def parse_ass(text: str, where: str = "subtitle") -> list[str]:
    """Dialogue events of an ASS/SSA script in screen order (by start time; file order breaks ties)."""
    section = ""
    fmt: list[str] | None = None
    events: list[tuple[float, int, str]] = []
    saw_events = False
    last_start = 0.0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip().lstrip("\ufeff")
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip().lower()
            saw_events = saw_events or section == "events"
            continue
        if section != "events" or not s or s.startswith(";"):
            continue
        key, sep, value = s.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "format":
            fmt = [f.strip().lower() for f in value.split(",")]
            if "text" not in fmt:
                raise GoushiError(f"{where}:{n}: the [Events] Format line has no Text field; is this an ASS/SSA file?")
            continue
        if key != "dialogue":
            continue  # Comment:, Picture:, Sound:, Movie:, Command: show no text
        fields = fmt or _ASS_DEFAULT_FORMAT
        parts = value.split(",", len(fields) - 1)
        if len(parts) < len(fields):
            raise GoushiError(f"{where}:{n}: Dialogue line has {len(parts)} fields but the Format line names "
                              f"{len(fields)}; fix or delete that line")
        start = _ass_seconds(parts[fields.index("start")]) if "start" in fields else None
        last_start = start if start is not None else last_start
        events.append((last_start, len(events), parts[fields.index("text")]))
    if not saw_events:
        raise GoushiError(f"{where}: no [Events] section, so no dialogue; is it really an ASS/SSA subtitle file?")
    events.sort()
    return dedupe([_ass_text(t) for _, _, t in events])


def dedupe(cues: list[str]) -> list[str]:
    """Non-empty cues, each different from the one before it (ignoring spacing)."""
    out: list[str] = []
    last = None
    for cue in cues:
        key = " ".join(cue.split())
        if key and key != last:
            out.append(cue)
        last = key or last
    return out


def parse(text: str, fmt: str, where: str = "subtitle") -> list[str]:
    """The cues of a subtitle file's text; `fmt` is srt, vtt or ass (ssa is ass)."""
    if fmt == "srt":
        return parse_srt(text)
    if fmt == "vtt":
        return parse_vtt(text)
    if fmt in ("ass", "ssa"):
        return parse_ass(text, where)
    raise GoushiError(f"{where}: unknown subtitle format {fmt!r}; use one of {', '.join(SUBTITLE_FORMATS)}")


__all__ = ["SUBTITLE_FORMATS", "decode", "parse", "parse_srt", "parse_vtt", "parse_ass", "clean_cue", "dedupe"]
