"""A run's record, typed: what RUN_DIR/config.json says, read and written here and nowhere else.

    {"format": 1,
     "model": ModelConfig,
     "train": TrainConfig's fields (what `--resume` starts from),
     "data": {"dir", "file", "tokenizer_hash", "meta"},     meta: the data's meta.json ("sources" credit them)
     "sft": {...}, "chat_template": {...},                   a chat fine-tuned run only
     "dpo": {...},                                           a run tuned on preference pairs (`goushi dpo`)
     "base": {"run_dir", "data_dir", "sources", "base"},     a run started from another one (--init-from, sft)
     "imported": {"from", "model_type", ...},                a run imported from Hugging Face
     "goushi_version": "0.1.0"}

Runs written before "format" existed have the same sections and are read as format 1. A record of a newer format
is refused with the version to upgrade to; a config.json of another program (a Hugging Face model directory, say)
is refused with what to do instead. Keys this version does not know are kept and written back unchanged, so a
rewrite never loses what a newer goushi of the same format added. Torch-free: the page and the model card read
records without loading a model; file names and paths belong to goushi.rundir.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from goushi.chat import ChatTemplate
from goushi.config import ModelConfig
from goushi.errors import GoushiError

RUN_FORMAT = 1


def _section(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GoushiError(f"{where}: must be a JSON object, not {type(raw).__name__}")
    return raw


def _split_known(cls: type, raw: dict[str, Any], renames: dict[str, str] | None = None) -> tuple[dict, dict]:
    """(the fields `cls` declares, the rest): the rest is kept as `extra` and written back."""
    renames = renames or {}
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known, extra = {}, {}
    for k, v in raw.items():
        name = renames.get(k, k)
        (known if name in names else extra)[name if name in names else k] = v
    return known, extra


def _with_extra(values: dict[str, Any], extra: dict[str, Any], renames: dict[str, str] | None = None) -> dict:
    back = {v: k for k, v in (renames or {}).items()}
    return {**{back.get(k, k): v for k, v in values.items()}, **extra}


@dataclass
class DataRecord:
    """What the run learned from: the DATA_DIR (`dir`, for its validation text and verbatim-copy index), a chat
    run's JSONL (`file`), the tokenizer's hash and the data's meta.json (its "sources" credit them)."""

    dir: str | None = None
    file: str | None = None
    tokenizer_hash: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> dict[str, dict[str, Any]]:
        s = self.meta.get("sources")
        return s if isinstance(s, dict) else {}

    @property
    def tokenizer_kind(self) -> str:
        return str(self.meta.get("tokenizer_kind") or "")

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> DataRecord:
        known, extra = _split_known(cls, _section(raw, where))
        rec = cls(**known, extra=extra)
        rec.meta = _section(rec.meta, f"{where}.meta")
        return rec

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        if self.file is None:
            values.pop("file")  # text runs never had it
        return _with_extra(values, self.extra)


@dataclass
class BaseRecord:
    """The run this one started from, and whose data that run learned from (the credit carries down the chain)."""

    run_dir: str
    data_dir: str | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    base: BaseRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> BaseRecord | None:
        if raw is None:
            return None
        known, extra = _split_known(cls, _section(raw, where))
        if "run_dir" not in known:
            raise GoushiError(f"{where}: has no run_dir (which run this one started from)")
        known["base"] = cls.from_dict(known.get("base"), f"{where}.base")
        known["sources"] = _section(known.get("sources"), f"{where}.sources")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _with_extra({"run_dir": self.run_dir, "data_dir": self.data_dir, "sources": self.sources,
                            "base": self.base.to_dict() if self.base is not None else None}, self.extra)


@dataclass
class SftRecord:
    """How a chat fine-tune went: its data file, rows kept and skipped, tokens trained, split and credit."""

    data: str
    rows: int = 0
    train_rows: int = 0
    val_rows: int = 0
    skipped_rows: int = 0
    truncated_rows: int = 0
    trained_tokens: int = 0
    val_fraction: float = 0.05
    seed: int = 1337
    credit: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> SftRecord | None:
        if not raw:  # absent (or an old falsy marker): not a chat run
            return None
        known, extra = _split_known(cls, _section(raw, where))
        if "data" not in known:
            raise GoushiError(f"{where}: has no data (the chat file the run was tuned on)")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _with_extra({k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}, self.extra)


@dataclass
class DpoRecord:
    """How a preference tuning (DPO) went: its pairs file, pairs kept and skipped, the split, beta, the reference,
    and the file's credit."""

    data: str
    pairs: int = 0
    train_pairs: int = 0
    val_pairs: int = 0
    skipped_rows: int = 0
    unpaired_rows: int = 0  # single-answer thumbs without a partner of the other kind for their prompt
    truncated_rows: int = 0
    trained_tokens: int = 0
    beta: float = 0.1
    reference: str = ""  # what the loss compares against: the starting run's weights, or LoRA's adapters off
    val_fraction: float = 0.05
    seed: int = 1337
    credit: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> DpoRecord | None:
        if not raw:
            return None
        known, extra = _split_known(cls, _section(raw, where))
        if "data" not in known:
            raise GoushiError(f"{where}: has no data (the preference file the run was tuned on)")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _with_extra({k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}, self.extra)


_IMPORT_RENAMES = {"from": "source"}  # "from" is a Python keyword


@dataclass
class ImportRecord:
    """Where an imported run's weights came from (a Hugging Face directory) and what did not carry over."""

    source: str
    model_type: str | None = None
    architectures: list[str] | None = None
    document_token: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ImportRecord | None:
        if raw is None:
            return None
        known, extra = _split_known(cls, _section(raw, where), _IMPORT_RENAMES)
        if "source" not in known:
            raise GoushiError(f"{where}: has no \"from\" (the directory the weights were imported from)")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return _with_extra(values, self.extra, _IMPORT_RENAMES)


@dataclass
class RunRecord:
    """One run directory's config.json."""

    model: ModelConfig
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig's fields; goushi.train.config merges them
    data: DataRecord = field(default_factory=DataRecord)
    sft: SftRecord | None = None
    dpo: DpoRecord | None = None
    chat_template: ChatTemplate | None = None
    base: BaseRecord | None = None
    imported: ImportRecord | None = None
    goushi_version: str = ""
    format: int = RUN_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        """A run answers chats only after chat fine-tuning, which records "sft" (or preference tuning, "dpo",
        which starts from a chat run)."""
        return self.sft is not None or self.dpo is not None

    @property
    def template(self) -> ChatTemplate:
        """The chat template the run was tuned with; ChatML when it has none."""
        return self.chat_template if self.chat_template is not None else ChatTemplate()

    def all_sources(self) -> dict[str, dict[str, Any]]:
        """Every source the weights learned from: the run's data and, down the chain of base runs, theirs."""
        out = dict(self.data.sources)
        base = self.base
        while base is not None:
            for sid, s in base.sources.items():
                out.setdefault(f"{sid} (base)", s)
            base = base.base
        return out

    def card_data(self) -> dict[str, Any]:
        """The data section the model card renders: the data's meta with the base chain beside it."""
        meta = dict(self.data.meta)
        if self.base is not None:
            meta["base"] = self.base.to_dict()
        return meta

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config.json") -> RunRecord:
        """The record in `raw` (config.json's parsed JSON); errors name `source`."""
        if not isinstance(raw, dict):
            raise GoushiError(f"{source}: must hold a JSON object, not {type(raw).__name__}")
        fmt = raw.get("format", 1)
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise GoushiError(f"{source}: format={fmt!r} is not a run format (a whole number from 1)")
        if fmt > RUN_FORMAT:
            raise GoushiError(f"{source}: written by a newer goushi (run format {fmt}, this one reads up to "
                              f"{RUN_FORMAT}); upgrade goushi to use this run")
        if "model" not in raw:
            if "model_type" in raw or "architectures" in raw:
                raise GoushiError(f"{source}: a Hugging Face model's config, not a goushi run; import it with "
                                  f"`goushi import {source.rsplit('/', 1)[0] if '/' in source else '.'} --out RUN_DIR`")
            raise GoushiError(f"{source}: has no \"model\" section; not a goushi run directory")
        known, extra = _split_known(cls, raw)
        tpl = known.get("chat_template")
        if tpl is not None:
            tpl = ChatTemplate.from_dict(_section(tpl, f"{source} chat_template"))
        try:
            model = ModelConfig.from_dict(_section(known["model"], f"{source} model"), source=source)
        except GoushiError as e:
            raise type(e)(str(e) if source in str(e) else f"{source}: {e}") from None
        return cls(model=model,
                   train=dict(_section(known.get("train"), f"{source} train")),
                   data=DataRecord.from_dict(known.get("data"), f"{source} data"),
                   sft=SftRecord.from_dict(known.get("sft"), f"{source} sft"),
                   dpo=DpoRecord.from_dict(known.get("dpo"), f"{source} dpo"),
                   chat_template=tpl,
                   base=BaseRecord.from_dict(known.get("base"), f"{source} base"),
                   imported=ImportRecord.from_dict(known.get("imported"), f"{source} imported"),
                   goushi_version=str(known.get("goushi_version") or ""), format=fmt, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "model": self.model.to_dict(), "train": self.train,
                               "data": self.data.to_dict()}
        if self.sft is not None:
            out["sft"] = self.sft.to_dict()
        if self.dpo is not None:
            out["dpo"] = self.dpo.to_dict()
        if self.chat_template is not None:
            out["chat_template"] = self.chat_template.to_dict()
        if self.base is not None:
            out["base"] = self.base.to_dict()
        if self.imported is not None:
            out["imported"] = self.imported.to_dict()
        out["goushi_version"] = self.goushi_version
        return {**out, **self.extra}


__all__ = ["RUN_FORMAT", "RunRecord", "DataRecord", "BaseRecord", "SftRecord", "DpoRecord", "ImportRecord"]
