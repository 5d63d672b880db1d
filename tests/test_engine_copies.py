"""The engine's check_copies option: generated text is checked against the run's verbatim-copy index."""

import json
import shutil

import pytest

from goushi.cli import main
from goushi.data.textindex import TextIndexWriter
from goushi.engine import Engine, SampleConfig
from goushi.errors import GoushiError

POEM = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"


@pytest.fixture()
def run_with_data(make_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(make_run("char"), run)
    data = tmp_path / "data"
    w = TextIndexWriter(data)
    w.add(POEM, "tang")
    w.add("今天天气不错。", "misc")
    w.close({"tang": {"author": "李白", "url": "https://example.org/tang", "license": "public domain"},
             "misc": {"author": "", "url": "", "license": ""}})
    info = json.loads((run / "config.json").read_text(encoding="utf-8"))
    info["data"] = {"dir": str(data)}
    (run / "config.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    return run


def test_copied_spans_name_the_source(run_with_data):
    engine = Engine.load(run_with_data, device="cpu")
    spans = engine.copied_spans("我说举头望明月，低头思故乡啊", 8)
    assert [(s.text, s.source_id, s.author) for s in spans] == [("举头望明月，低头思故乡", "tang", "李白")]
    assert engine.copied_spans("完全不同的一句话，没有重合", 8) == []


def test_generate_fills_copied_when_asked(run_with_data):
    engine = Engine.load(run_with_data, device="cpu")
    cfg = SampleConfig(strategy="sample", seed=1, max_new_tokens=30, num_samples=2, check_copies=3)
    for g in engine.generate(["床前"], cfg):
        assert g.copied == engine.copied_spans(g.text, 3)
    off = engine.generate(["床前"], SampleConfig(strategy="greedy", max_new_tokens=5))[0]
    assert off.copied == []


def test_missing_index_is_a_clear_error(make_run):
    engine = Engine.load(make_run("char"), device="cpu")
    with pytest.raises(GoushiError, match="no data.dir recorded.*--data DATA_DIR.*or turn --check-copies off"):
        engine.generate(["x"], SampleConfig(strategy="greedy", max_new_tokens=3, check_copies=8))
    with pytest.raises(GoushiError, match="check-copies"):  # refused when asked, before any token is made
        engine.stream(["x"], SampleConfig(check_copies=8))


def _index(where, source: str) -> None:
    w = TextIndexWriter(where)
    w.add(POEM, source)
    w.close({source: {"author": source, "url": "", "license": ""}})


def test_the_index_is_found_where_rundir_says(make_run, tmp_path, monkeypatch):
    """--data wins; then the run's recorded data directory; then RUN_DIR/provenance; then a clear error."""
    run = tmp_path / "run"
    shutil.copytree(make_run("char"), run)
    for name in ("recorded", "explicit"):
        _index(tmp_path / name, name)
    _index(run, "packed")  # RUN_DIR/provenance/
    info = json.loads((run / "config.json").read_text(encoding="utf-8"))
    (run / "config.json").write_text(json.dumps({**info, "data": {"dir": str(tmp_path / "recorded")}}), encoding="utf-8")

    def source(engine) -> str:
        return engine.copied_spans("举头望明月，低头思故乡", 8)[0].source_id

    assert source(Engine.load(run, device="cpu", data_dir=tmp_path / "explicit")) == "explicit"
    engine = Engine.load(run, device="cpu")
    assert source(engine) == "recorded"
    shutil.rmtree(tmp_path / "recorded")  # the data moved away: the run's own copy
    assert source(Engine.load(run, device="cpu")) == "packed"
    # the index is looked up once per engine
    monkeypatch.setattr("goushi.rundir.provenance_index_dir", lambda *a: pytest.fail("looked up again"))
    assert source(engine) == "recorded"
    monkeypatch.undo()
    shutil.rmtree(run / "provenance")
    with pytest.raises(GoushiError, match="provenance index not found.*pass --data DATA_DIR"):
        Engine.load(run, device="cpu").copied_spans(POEM)
    with pytest.raises(GoushiError, match="--data"):
        Engine.load(run, device="cpu", data_dir=tmp_path / "nothing").copied_spans(POEM)
    in_memory = Engine(engine.model, engine.tokenizer)
    with pytest.raises(GoushiError, match="no run or data directory known"):
        in_memory.copied_spans(POEM)
    assert source(Engine(engine.model, engine.tokenizer, data_dir=tmp_path / "explicit")) == "explicit"


def test_bad_check_copies_value():
    with pytest.raises(GoushiError, match="--check-copies -1"):
        SampleConfig(check_copies=-1).validate()


def test_sample_cli_reports_copies(run_with_data, capsys):
    assert main(["sample", str(run_with_data), "--prompt", "床前", "--strategy", "greedy",
                 "--max-new-tokens", "8", "--check-copies", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "copied" in err
