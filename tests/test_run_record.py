"""goushi.run_record: config.json typed, its format version, clear errors for a newer or a foreign file, and
nothing lost on a rewrite."""

from __future__ import annotations

import json

import pytest

from goushi import rundir
from goushi.errors import GoushiError
from goushi.run_record import RUN_FORMAT, BaseRecord, DataRecord, RunRecord, SftRecord
from run_files import read_config, write_config


def test_a_record_round_trips_and_new_runs_say_their_format(make_run, tmp_path):
    rec = rundir.read_run(make_run("char"))
    rec.data = DataRecord(dir="data", tokenizer_hash="abc", meta={"sources": {"s": {"license": "MIT"}},
                                                                  "tokenizer_kind": "char"})
    rec.sft = SftRecord(data="chat.jsonl", rows=3)
    rec.base = BaseRecord(run_dir="base", sources={"b": {"license": "CC0-1.0"}},
                          base=BaseRecord(run_dir="grand", sources={"g": {"license": "MIT"}}))
    rundir.write_run(tmp_path, rec)
    raw = read_config(tmp_path)
    assert raw["format"] == RUN_FORMAT and raw["sft"]["rows"] == 3 and raw["base"]["base"]["run_dir"] == "grand"
    again = rundir.read_run(tmp_path)
    assert again == rec and again.is_chat and again.data.tokenizer_kind == "char"
    assert set(again.all_sources()) == {"s", "b (base)", "g (base)"}
    assert again.card_data()["base"]["run_dir"] == "base"


def test_a_run_written_before_the_format_field_reads_as_format_1(make_run, tmp_path):
    raw = read_config(make_run("char"))
    raw.pop("format", None)
    write_config(tmp_path, {**raw, "sft": {"data": "c.jsonl"}, "chat_template": {"turn_end": "<|end|>"}})
    rec = rundir.read_run(tmp_path)
    assert rec.format == 1 and rec.is_chat and rec.template.turn_end == "<|end|>"


def test_keys_this_version_does_not_know_are_kept_on_a_rewrite(make_run, tmp_path):
    raw = read_config(make_run("char"))
    write_config(tmp_path, {**raw, "future": {"x": 1}, "data": {"dir": "d", "shards": 4},
                            "imported": {"from": "/hf", "revision": "main"}})
    rundir.write_run(tmp_path, rundir.read_run(tmp_path))
    back = read_config(tmp_path)
    assert back["future"] == {"x": 1} and back["data"]["shards"] == 4
    assert back["imported"] == {"from": "/hf", "model_type": None, "architectures": None, "document_token": None,
                                "notes": [], "revision": "main"}


@pytest.mark.parametrize("raw,says", [
    ({"format": RUN_FORMAT + 1, "model": {}}, r"written by a newer goushi \(run format 2.*upgrade goushi"),
    ({"format": "one", "model": {}}, r"format='one' is not a run format"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, r"a Hugging Face model's config.*goushi import"),
    ({"weights": "x"}, r"has no \"model\" section; not a goushi run directory"),
    ([1, 2], r"must hold a JSON object, not list"),
    ({"model": {}, "sft": True}, r"sft: must be a JSON object, not bool"),
    ({"model": {}, "sft": {"rows": 3}}, r"sft: has no data"),
    ({"model": {}, "base": {"sources": {}}}, r"base: has no run_dir"),
    ({"model": {}, "data": {"meta": []}}, r"data.meta: must be a JSON object, not list"),
    ({"model": {"n_layer": 0}}, r"n_layer=0"),
])
def test_bad_records_are_refused_naming_the_file_and_what_to_do(tmp_path, raw, says):
    (tmp_path / rundir.CONFIG).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(GoushiError, match=says) as e:
        rundir.read_run(tmp_path)
    assert str(tmp_path / rundir.CONFIG) in str(e.value)


def test_records_compare_and_build_in_code():
    from goushi.config import preset_config

    rec = RunRecord(model=preset_config("tiny", "gpt2", vocab_size=50))
    assert not rec.is_chat and rec.all_sources() == {} and rec.to_dict()["format"] == RUN_FORMAT
    assert RunRecord.from_dict(rec.to_dict()) == rec
