"""Intent accuracy, slot F1 and sentence accuracy: the metrics, their place in ``summarize``, the
``evaluations`` columns of m007, and ``supertiny eval`` on the snips domain with a real tiny model."""
import csv
import json
import os
import sqlite3
import subprocess
import sys

import pytest
from rich.console import Console

from dataengine.schema import TaskRow
from dataengine.store import Store
from dataengine.verify import compare_calls
from student.evaluate import Prediction, summarize
from student.intent_slot import intent_slot_metrics, slot_pairs
from student.tiny import build_tiny_model
from supertiny.output import evaluation_table
from tools.registry import get_domain
from tools.snips.tasks import load_tasks


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


GOLD = call("PlayMusic", artist="Adele", service="Spotify")


def test_a_list_value_is_one_pair_per_item_and_null_is_missing():
    pairs = slot_pairs(call("AddToPlaylist", playlist=["new", "música libre"], artist=None, music_item="song"))
    assert sorted(pairs.elements()) == [("music_item", "song"), ("playlist", "música libre"), ("playlist", "new")]
    assert not slot_pairs(None)


def test_perfect_predictions_score_one_and_no_prediction_scores_zero():
    assert intent_slot_metrics([(GOLD, GOLD)]) == {"intent_accuracy": 1.0, "slot_f1": 1.0, "sentence_accuracy": 1.0}
    assert intent_slot_metrics([(None, GOLD)]) == {"intent_accuracy": 0.0, "slot_f1": 0.0, "sentence_accuracy": 0.0}


def test_slot_f1_is_micro_over_the_whole_set_not_a_mean_of_sentences():
    one_slot_gold = call("GetWeather", city="Paris")
    pairs = [
        (call("PlayMusic", artist="Adele"), GOLD),                    # 1 of 2 gold pairs, nothing wrong predicted
        (call("GetWeather", city="Paris", timeRange="now"), one_slot_gold),  # right slot plus a spurious one
        (call("SearchCreativeWork", city="Paris"), one_slot_gold),   # wrong intent: its right slot still counts
    ]
    metrics = intent_slot_metrics(pairs)
    # TP = 1 + 1 + 1, predicted = 1 + 2 + 1, gold = 2 + 1 + 1: F1 = 2 * 3 / (4 + 4)
    assert metrics["slot_f1"] == pytest.approx(0.75)
    sentence_f1s = [2 / 3, 2 / 3, 1.0]
    assert metrics["slot_f1"] != pytest.approx(sum(sentence_f1s) / 3)
    assert metrics["intent_accuracy"] == pytest.approx(2 / 3)
    assert metrics["sentence_accuracy"] == 0.0


def test_values_are_compared_verbatim_unlike_the_verifiers_exact_match():
    shouted = call("PlayMusic", artist="ADELE", service="Spotify")
    assert compare_calls(shouted, GOLD)["exact"]  # the verifier forgives case
    metrics = intent_slot_metrics([(shouted, GOLD)])
    assert metrics["sentence_accuracy"] == 0.0 and metrics["slot_f1"] == pytest.approx(0.5)
    padded = call("PlayMusic", artist=" Adele ", service="Spotify")  # surrounding whitespace is not a span
    assert intent_slot_metrics([(padded, GOLD)])["sentence_accuracy"] == 1.0
    unquoted = call("BookRestaurant", party_size_number=8)  # "8" is what the utterance said
    assert intent_slot_metrics([(unquoted, call("BookRestaurant", party_size_number="8"))])["slot_f1"] == 1.0


def task(task_id, gold, slice=None):
    return TaskRow(id=task_id, domain="snips", split="dev", slice=slice, input="x", context={}, gold=gold)


def test_summarize_adds_the_metrics_per_slice_only_for_intent_slot_domains():
    tasks = [task("a", GOLD, "seen"), task("b", call("GetWeather", city="Paris"), "novel")]
    predictions = [Prediction("a", GOLD, 10.0, 5, 1), Prediction("b", call("GetWeather", city="paris"), 20.0, 5, 1)]
    rows, _ = summarize("r", "student", "dir", None, "dev", tasks, predictions, slot_metrics=True)
    by_slice = {r.slice: r for r in rows}
    assert by_slice["all"].exact_match == 1.0  # "paris" passes the verifier...
    assert by_slice["all"].sentence_accuracy == 0.5  # ...but is not the utterance's span
    assert by_slice["all"].slot_f1 == pytest.approx(2 * 2 / (3 + 3))
    assert by_slice["seen"].sentence_accuracy == 1.0 and by_slice["novel"].sentence_accuracy == 0.0
    assert by_slice["novel"].intent_accuracy == 1.0
    plain, _ = summarize("r", "student", "dir", None, "dev", tasks, predictions)
    assert all(r.intent_accuracy is None and r.slot_f1 is None and r.sentence_accuracy is None for r in plain)


def test_the_metrics_are_stored_in_the_evaluations_table(store):
    tasks = [task("a", GOLD)]
    store.add_tasks(tasks)
    rows, predictions = summarize("run1", "student", "dir", None, "dev", tasks,
                                  [Prediction("a", call("PlayMusic", artist="Adele"), 1.0, 1, 1)], slot_metrics=True)
    store.add_evaluation(rows, predictions)
    with sqlite3.connect(store.path) as conn:
        stored = conn.execute("select intent_accuracy, slot_f1, sentence_accuracy from evaluations "
                              "where run_id = 'run1'").fetchone()
    assert stored == (1.0, pytest.approx(2 / 3), 0.0)
    assert store.evaluations("run1")[0].slot_f1 == pytest.approx(2 / 3)


def utterance(*pieces):
    return {"data": [{"text": p} if isinstance(p, str) else {"text": p[1], "entity": p[0]} for p in pieces]}


def test_eval_on_the_snips_domain_prints_stores_and_exports_the_metrics(tmp_path):
    """A real (tiny, untrained) model through `supertiny eval`: the numbers are whatever it
    predicts, so the test checks they are the metrics of its stored predictions."""
    data = tmp_path / "snips"
    data.mkdir()
    (data / "dev_PlayMusic.json").write_text(json.dumps({"PlayMusic": [
        utterance("play ", ("artist", "Adele"), " on ", ("service", "Spotify")),
        utterance("play some ", ("genre", "jazz")),
        utterance("put on ", ("track", "Hello"), " by ", ("artist", "Adele"))]}))
    (data / "dev_GetWeather.json").write_text(json.dumps({"GetWeather": [
        utterance("weather in ", ("city", "Paris"), " ", ("timeRange", "tomorrow"))]}))
    texts = [t.input for t in load_tasks(data)]
    model_dir = build_tiny_model(tmp_path / "tiny", texts, vocab_size=300, hidden_size=32, num_layers=2, num_heads=2)
    db = tmp_path / "eval.db"
    env = {**os.environ, "SUPERTINY_DB": str(db), "COLUMNS": "200"}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "supertiny.cli", *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    Store(db).add_tasks(load_tasks(data))
    out = tmp_path / "table.csv"
    printed = json.loads(cli("eval", "--domain", "snips", "--split", "dev", "--teacher", "", "--model",
                             f"student={model_dir}", "--out", str(out), "--json"))  # stdout is the JSON alone
    assert {"intent_accuracy", "slot_f1", "sentence_accuracy"} <= printed[0].keys()
    with sqlite3.connect(db) as conn:
        row = conn.execute("select run_id, n, intent_accuracy, slot_f1, sentence_accuracy from evaluations "
                           "where slice = 'all'").fetchone()
        predicted = [(json.loads(p) if p else None, json.loads(g)) for p, g in conn.execute(
            "select p.prediction, t.gold from predictions p join tasks t on t.id = p.task_id "
            "where p.evaluation_run = ?", (row[0],))]
    assert row[1] == 4 and len(predicted) == 4
    assert row[2:] == tuple(pytest.approx(v) for v in intent_slot_metrics(predicted).values())
    assert printed[0]["slot_f1"] == pytest.approx(row[3])
    exported, = list(csv.DictReader(out.open()))
    assert float(exported["slot_f1"]) == pytest.approx(row[3]) and exported["run_id"] == row[0]


def test_the_eval_table_shows_intent_slot_columns_only_when_rows_have_them():
    tasks = [task("a", GOLD)]
    rows, _ = summarize("r", "student", "dir", None, "dev", tasks, [Prediction("a", GOLD, 1.0, 1, 1)], slot_metrics=True)
    plain, _ = summarize("r", "student", "dir", None, "dev", tasks, [Prediction("a", GOLD, 1.0, 1, 1)])
    console = Console(record=True, width=200)
    console.print(evaluation_table(rows))
    with_slots = console.export_text(clear=True)
    console.print(evaluation_table(plain))
    without = console.export_text()
    assert "slot F1" in with_slots and "sent" in with_slots and "intent" in with_slots
    assert "slot F1" not in without and "intent" not in without and "EM" in without
    assert get_domain("home").slot_metrics is False and get_domain("snips").slot_metrics is True
