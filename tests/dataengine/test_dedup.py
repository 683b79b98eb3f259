"""Deduplication on crafted near-duplicates: real agent runs (the offline planner) stored in a
real SQLite file, then dedup scores read back with sqlite3."""
import itertools
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from agent.backends import make_chat_model
from agent.run import run_request
from dataengine.curate import best_of_n, verify_traces
from dataengine.dedup import (
    DEDUP_INPUT, DEDUP_TRAJECTORY, MinHasher, cluster, dedup_inputs, dedup_trajectories, jaccard,
    near_duplicate_pairs, normalize_text, shingles,
)
from supertiny.errors import UserError
from tools.home.tasks import generate_tasks
from tools.registry import Task, get_domain

CONTEXT = {"now": "2026-03-14T09:30", "weekday": "Saturday"}
KITCHEN_OFF = {"name": "control_device", "arguments": {"device_id": "light.kitchen", "action": "off"}}


def task(task_id, text, gold):
    return Task(id=task_id, domain="home", split="train", input=text, context=CONTEXT, gold=gold)


def run_samples(store, tasks, samples=2):
    """Each task run ``samples`` times by the real teacher graph with the offline planner."""
    domain = get_domain("home")
    for t in tasks:
        for index in range(samples):
            chat = make_chat_model("planner", domain=domain, temperature=0.0, seed=index)
            result = run_request(domain, chat, t.input, t.context)
            store.add_trace(result, domain="home", model="planner", input=t.input, context=t.context, task_id=t.id,
                            sample_index=index)


def scores(db, scorer):
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select s.trace_id, t.task_id, s.value, s.details from scores s join traces t"
                            " on t.id = s.trace_id where s.scorer = ? order by s.trace_id", (scorer,)).fetchall()
    return [(trace_id, task_id, value, json.loads(details)) for trace_id, task_id, value, details in rows]


# ---- similarity, without a database -----------------------------------------------------------------


def test_normalization_makes_case_punctuation_and_spacing_irrelevant():
    assert normalize_text("  Turn OFF the kitchen-lights, please!! ") == "turn off the kitchen lights please"
    assert jaccard(shingles(normalize_text("Play Jazz."), 4), shingles(normalize_text("play jazz"), 4)) == 1.0


def test_clusters_join_exact_and_near_duplicates_but_not_different_requests():
    texts = {
        "a": "turn off the kitchen lights",
        "b": "Turn off the kitchen lights!",            # exact after normalization
        "c": "turn off the kitchen light",              # near: one letter
        "d": "turn on the kitchen lights",              # one word changes the meaning
        "e": "set a timer for 20 minutes",
        "f": "set a timer for 25 minutes",
        "g": "please turn off the kitchen lights",      # a filler word: near only at a lower threshold
    }

    def similarity(x, y):
        return jaccard(shingles(normalize_text(texts[x]), 4), shingles(normalize_text(texts[y]), 4))

    assert sorted(map(sorted, cluster(texts, threshold=0.85, ngram=4))) == [["a", "b", "c"], ["d"], ["e"], ["f"], ["g"]]
    assert similarity("a", "c") >= 0.85 > similarity("a", "g") >= 0.75 > similarity("a", "d")  # why
    assert sorted(map(sorted, cluster(texts, threshold=0.75, ngram=4))) == [["a", "b", "c", "g"], ["d"], ["e"], ["f"]]
    assert sorted(map(sorted, cluster(texts, threshold=1.0, ngram=4))) == [["a", "b"], ["c"], ["d"], ["e"], ["f"], ["g"]]


@pytest.mark.parametrize("threshold", [0.6, 0.85])
def test_minhash_lsh_finds_the_same_pairs_as_comparing_every_pair(threshold):
    texts = {t.id: normalize_text(t.input) for t in generate_tasks(seed=0, n_train=300, n_dev=0, n_test=0)}
    distinct = {}
    for key, text in texts.items():  # cluster() sends one key per distinct text to LSH; do the same
        distinct.setdefault(text, key)
    texts = {key: text for text, key in distinct.items()}
    sets = {key: shingles(text, 4) for key, text in texts.items()}
    brute = {(a, b) for a, b in itertools.combinations(texts, 2) if jaccard(sets[a], sets[b]) >= threshold}
    found = {(a, b) for a, b, _ in near_duplicate_pairs(texts, threshold=threshold, ngram=4)}
    assert brute and found == brute


def test_minhash_agreement_estimates_jaccard():
    hasher = MinHasher(num_perm=256, seed=3)
    a = shingles("could you turn off the lights in the kitchen please", 4)
    b = shingles("could you switch off the lights in the kitchen now", 4)
    estimate = float((hasher.signature(a) == hasher.signature(b)).mean())
    assert abs(estimate - jaccard(a, b)) < 0.1
    assert (MinHasher(seed=3).signature(a) == MinHasher(seed=3).signature(a)).all()  # same seed, same signature


def test_bad_settings_are_one_line_errors():
    with pytest.raises(UserError, match="--threshold must be in"):
        cluster({"a": "x"}, threshold=0, ngram=4)
    with pytest.raises(UserError, match="--ngram must be at least 1"):
        cluster({"a": "x"}, threshold=0.9, ngram=0)


# ---- stored as scores -------------------------------------------------------------------------------


@pytest.fixture
def near_duplicate_tasks(store):
    tasks = [
        task("t1", "turn off the kitchen lights", {"name": "control_device",  # wrong gold: its traces fail
                                                   "arguments": {"device_id": "light.bedroom", "action": "off"}}),
        task("t2", "Turn off the kitchen lights!", KITCHEN_OFF),
        task("t3", "turn off the kitchen light", KITCHEN_OFF),
        task("t4", "set a timer for 20 minutes", {"name": "set_timer", "arguments": {"duration": "PT20M"}}),
        task("t5", "set a timer for 25 minutes", {"name": "set_timer", "arguments": {"duration": "PT25M"}}),
    ]
    store.add_tasks(tasks)
    run_samples(store, tasks, samples=2)
    verify_traces(store, domain="home", split="train")
    return tasks


def test_input_dedup_keeps_the_task_with_the_best_trace_and_marks_the_rest(store, near_duplicate_tasks):
    counts = dedup_inputs(store, domain="home", split="train")
    assert counts == {"scorer": DEDUP_INPUT, "compared": 5, "clusters": 1, "kept": 6, "duplicates": 4}
    rows = scores(store.path, DEDUP_INPUT)
    by_task = {}
    for trace_id, task_id, value, details in rows:
        by_task.setdefault(task_id, set()).add((value, details["cluster"], details["match"]))
    # t1's traces fail gold; t2 and t3 pass with as many model calls, and t3's shorter request
    # costs fewer tokens: t3 represents the kitchen cluster
    tokens = {t.task_id: t.prompt_tokens + t.completion_tokens for t in store.traces(domain="home")}
    assert tokens["t3"] < tokens["t2"]
    assert by_task["t3"] == {(1.0, "t3", "representative")}
    assert by_task["t1"] == {(0.0, "t3", "near")} and by_task["t2"] == {(0.0, "t3", "near")}
    assert by_task["t4"] == {(1.0, "t4", "representative")} and by_task["t5"] == {(1.0, "t5", "representative")}
    t2_details = next(d for _, task_id, _, d in rows if task_id == "t2")
    assert 0.85 <= t2_details["similarity"] < 1 and t2_details["size"] == 3
    assert t2_details["provenance"]["scorer"] == DEDUP_INPUT and t2_details["provenance"]["version"]
    assert t2_details["provenance"]["config"]["threshold"] == 0.85

    dataset, counts = best_of_n(store, name="dedup", domain="home", require=[DEDUP_INPUT])
    assert sorted(t.task_id for t, _ in store.dataset_items(dataset.id)) == ["t3", "t4", "t5"]
    assert dataset.spec["require"] == ["dedup_input>=1"]
    dataset, _ = best_of_n(store, name="all", domain="home")  # without the requirement t2 passes too
    assert sorted(t.task_id for t, _ in store.dataset_items(dataset.id)) == ["t2", "t3", "t4", "t5"]

    # exact duplicates only: t1 and t2 say the same thing; t2 wins on gold although t1 is older
    dedup_inputs(store, domain="home", split="train", threshold=1.0)
    by_task = {task_id: (value, d["cluster"], d["match"]) for _, task_id, value, d in scores(store.path, DEDUP_INPUT)}
    assert by_task["t1"] == (0.0, "t2", "exact") and by_task["t2"] == (1.0, "t2", "representative")
    assert by_task["t3"] == (1.0, "t3", "representative")


def test_trajectory_dedup_keeps_one_trace_per_path(store, near_duplicate_tasks):
    counts = dedup_trajectories(store, domain="home", split="train")
    rows = scores(store.path, DEDUP_TRAJECTORY)
    kept = [(trace_id, task_id) for trace_id, task_id, value, _ in rows if value == 1.0]
    # the three kitchen tasks take nearly the same path in every sample (find_device with "light" for
    # t3, "lights" for t1 and t2, then the same control_device call): one cluster of 6, represented
    # by t3's first trace (passes gold, fewest tokens); each timer task's two samples are one
    # cluster each, and 20 vs 25 minutes are different paths
    assert [task_id for _, task_id in kept] == ["t3", "t4", "t5"]
    assert counts == {"scorer": DEDUP_TRAJECTORY, "compared": 10, "clusters": 3, "kept": 3, "duplicates": 7}
    kitchen = [d for _, task_id, _, d in rows if task_id in ("t1", "t2", "t3")]
    assert {d["representative"] for d in kitchen} == {kept[0][0]} and {d["size"] for d in kitchen} == {6}
    assert sorted(d["match"] for _, task_id, _, d in rows if task_id in ("t1", "t2", "t3")) == [
        "exact", "near", "near", "near", "near", "representative"]


def test_the_cli_dedups_and_prints_json(store, near_duplicate_tasks):
    env = {**os.environ, "SUPERTINY_DB": str(store.path)}
    proc = subprocess.run([sys.executable, "-m", "supertiny.cli", "traces", "dedup", "--on", "input", "--json"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"scorer": DEDUP_INPUT, "compared": 5, "clusters": 1, "kept": 6, "duplicates": 4}]
    proc = subprocess.run([sys.executable, "-m", "supertiny.cli", "traces", "dedup", "--on", "words"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "--on must be input, trajectory or both" in proc.stderr

