"""`dataset build --from-gold` and `supertiny bench snips`: the SNIPS benchmark chain end to end on
a tiny model and a slice of the real benchmark files (../shared/data/snips; skipped without them)."""
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dataengine.export import chat_records, direct_examples
from dataengine.gold import gold_dataset
from dataengine.store import Store
from student.format import direct_completion
from tools.snips.tasks import decode_cesu8, load_tasks

SNIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "snips"
needs_snips = pytest.mark.skipif(not (SNIPS / "train_PlayMusic.json").is_file(),
                                 reason=f"SNIPS benchmark files not found at {SNIPS} (the shared data folder)")


def cli(args, db, check=True):
    # one thread: a tiny model is all synchronisation overhead on a busy machine (tests/student/conftest.py)
    env = {**os.environ, "SUPERTINY_DB": str(db), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "supertiny.cli", *args], env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def utterance(*pieces):
    return {"data": [{"text": p} if isinstance(p, str) else {"text": p[1], "entity": p[0]} for p in pieces]}


def test_a_dataset_from_gold_calls_is_versioned_with_lineage_and_stores_no_trace_twice(store, tmp_path):
    (tmp_path / "train_PlayMusic.json").write_text(json.dumps({"PlayMusic": [
        utterance("play ", ("artist", "Adele"), " on ", ("service", "Spotify")),
        utterance("play some ", ("genre", "jazz"))]}))
    (tmp_path / "train_GetWeather.json").write_text(json.dumps({"GetWeather": [
        utterance("weather in ", ("city", "Paris"))]}))
    tasks = load_tasks(tmp_path)
    store.add_tasks(tasks)
    dataset, counts = gold_dataset(store, name="g", domain="snips", split="train")
    assert (f"{dataset.name}@{dataset.version}", counts) == ("g@1", {"tasks": 3, "new_traces": 3, "kept": 3})
    by_input = {t.input: t for t in tasks}
    for example in direct_examples(store, "g@1"):
        prompt = example["prompt"].removesuffix("\n=>")
        assert example["completion"] == direct_completion(by_input[prompt].gold)
    record = chat_records(store, "g@1")[0]
    assert record["messages"][-1]["tool_calls"][0]["function"]["name"] in {"PlayMusic", "GetWeather"}
    again, counts = gold_dataset(store, name="g", domain="snips", split="train", limit=2)
    assert again.version == 2 and counts["new_traces"] == 0 and counts["kept"] == 2
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("select count(*), min(model), min(status) from traces").fetchone() == (3, "gold", "ok")
        assert conn.execute("select kind, model from jobs").fetchall() == [("gold", "gold")]


def test_dataset_build_from_gold_on_the_command_line(tmp_path):
    (tmp_path / "train_RateBook.json").write_text(json.dumps({"RateBook": [
        utterance("rate ", ("object_name", "Dune"), " ", ("rating_value", "five"), " stars")]}))
    db = tmp_path / "cli.db"
    Store(db).add_tasks(load_tasks(tmp_path))
    built = json.loads(cli(["dataset", "build", "rb", "--domain", "snips", "--from-gold", "--json"], db).stdout)
    assert built == [{"dataset": "rb@1", "tasks": 1, "new_traces": 1, "kept": 1}]
    refused = cli(["dataset", "build", "rb", "--domain", "snips", "--from-gold", "--require", "judge"], db, check=False)
    assert refused.returncode == 1 and "--from-gold" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    empty = cli(["dataset", "build", "x", "--domain", "snips", "--split", "dev", "--from-gold"], db, check=False)
    assert empty.returncode == 1 and "no dev tasks with gold" in empty.stderr


def test_bench_without_snips_files_is_one_line_and_stores_nothing(tmp_path):
    db = tmp_path / "b.db"
    proc = cli(["bench", "snips", "--data", str(tmp_path), "--base", "tiny"], db, check=False)
    assert proc.returncode == 1 and "no SNIPS files" in proc.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from tasks").fetchone()[0] == 0


def snips_slice(out: Path, train_per_intent: int, dev_per_intent: int) -> Path:
    """The first utterances of each real benchmark file, as a smaller benchmark directory."""
    out.mkdir()
    for file in sorted(SNIPS.glob("*_*.json")):
        keep = train_per_intent if file.name.startswith("train_") else dev_per_intent
        document = json.loads(decode_cesu8(file.read_bytes()))
        (out / file.name).write_text(json.dumps({k: v[:keep] for k, v in document.items()}, ensure_ascii=False))
    return out


@needs_snips
def test_bench_snips_runs_the_whole_chain_and_prints_published_numbers(tmp_path):
    data = snips_slice(tmp_path / "snips", train_per_intent=20, dev_per_intent=2)
    db, out = tmp_path / "bench.db", tmp_path / "artifacts"
    proc = cli(["bench", "snips", "--data", str(data), "--out", str(out), "--base", "tiny", "--mode", "full",
                "--learning-rate", "3e-3", "--limit", "70", "--max-steps", "12", "--eval-limit", "10", "--json"], db)
    summary = json.loads(proc.stdout)
    assert "JointBERT" in proc.stderr and "98.6" in proc.stderr  # the published numbers, beside ours
    assert summary["train_examples"] == 70 and summary["train_steps"] == 12 and summary["dev"]["n"] == 10
    with sqlite3.connect(db) as conn:
        splits = dict(conn.execute("select split, count(*) from tasks where domain = 'snips' group by split"))
        intents = conn.execute("select count(distinct json_extract(t.gold, '$.name')) from dataset_items i "
                               "join tasks t on t.id = i.task_id").fetchone()[0]
        student = conn.execute("select m.kind, d.name, p.kind from models m join datasets d on d.id = m.dataset_id "
                               "join models p on p.id = m.parent_id where m.id = ?", (summary["model_id"],)).fetchone()
        stored = conn.execute("select n, intent_accuracy, slot_f1, sentence_accuracy from evaluations "
                              "where run_id = ? and slice = 'all'", (summary["run_id"],)).fetchone()
    assert splits == {"train": 140, "dev": 14}
    assert intents == 7  # --limit spreads the 70 over every intent
    assert student == ("student", "snips-gold", "base")
    dev = summary["dev"]
    assert stored == (10, dev["intent_accuracy"], dev["slot_f1"], dev["sentence_accuracy"])
    written = json.loads((out / "snips_bench.json").read_text())
    assert written["run_id"] == summary["run_id"] and written["config"]["max_steps"] == 12
    assert {row["system"] for row in written["published_test"]} >= {"JointBERT (Chen et al., 2019)"}
