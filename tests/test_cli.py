"""The CLI as users run it: a subprocess, a real database file, exit codes and stderr."""
import json
import os
import sqlite3
import subprocess
import sys

import pytest


def run(args, db, check=False):
    env = {**os.environ, "SUPERTINY_DB": str(db)}
    proc = subprocess.run([sys.executable, "-m", "supertiny.cli", *args], env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def snapshot(db):
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        return {t: conn.execute(f"select count(*) from {t}").fetchone()[0]
                for t in ("tasks", "traces", "tool_calls", "scores", "datasets", "models")}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    db = tmp_path_factory.mktemp("cli") / "cli.db"
    run(["tasks", "generate", "--train", "20", "--dev", "0", "--test", "5"], db, check=True)
    run(["agent", "run", "turn off the kitchen lights", "--now", "2026-03-14T09:30"], db, check=True)
    run(["agent", "generate", "--split", "train", "--samples", "2"], db, check=True)
    run(["traces", "verify"], db, check=True)
    run(["dataset", "build", "mini"], db, check=True)
    return db


def test_agent_run_prints_steps_and_stores_a_queryable_trace(db):
    proc = run(["agent", "run", "set a timer for 20 minutes", "--json"], db, check=True)
    summary = json.loads(proc.stdout)
    assert summary["final_call"] == {"name": "set_timer", "arguments": {"duration": "PT20M"}}
    with sqlite3.connect(db) as conn:
        name, = conn.execute("select name from tool_calls where trace_id = ?", (summary["trace_id"],)).fetchone()
    assert name == "resolve_duration"
    shown = run(["agent", "run", "turn on the bedroom fan", "--now", "2026-03-14T09:30"], db, check=True).stdout
    assert "find_device" in shown and "control_device" in shown and "stored" in shown


def test_listing_and_export(db, tmp_path):
    traces = json.loads(run(["traces", "list", "--limit", "5", "--json"], db, check=True).stdout)
    assert len(traces) == 5 and all("final_call" in t for t in traces)
    out = tmp_path / "mini.jsonl"
    run(["dataset", "export", "mini", "--out", str(out)], db, check=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(line["messages"][-1]["tool_calls"] for line in lines)


@pytest.mark.parametrize("args,message", [
    (["tasks", "generate", "--domain", "nope"], "unknown domain 'nope'"),
    (["agent", "run", "hi", "--domain", "nope"], "unknown domain 'nope'"),
    (["dataset", "export", "nope"], "unknown dataset 'nope'"),
    (["student", "train", "--dataset", "nope", "--out", "x"], "unknown dataset 'nope'"),
    (["student", "train", "--dataset", "mini", "--out", "x", "--base", "/no/such/model"], "model path not found"),
    (["compress", "prune", "/no/such/model", "--out", "x"], "model path not found"),
    (["eval", "--model", "student=/no/such/model", "--teacher", ""], "model path not found"),
    (["agent", "run", "hi", "--model", "gpt9"], "unknown model 'gpt9'"),
    (["agent", "run", "hi", "--now", "yesterday"], "--now: not an ISO 8601 time"),
    (["traces", "show", "99999"], "no trace with id 99999"),
])
def test_bad_input_is_one_line_nonzero_and_leaves_the_db_intact(db, args, message):
    before = snapshot(db)
    proc = run(args, db)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(db) == before


def test_malformed_task_file_names_file_and_line(db, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "ok"}\n{"input": 3}\n')
    before = snapshot(db)
    proc = run(["tasks", "import", str(bad)], db)
    assert proc.returncode == 1 and f"{bad}:2: field 'input'" in proc.stderr
    assert snapshot(db) == before
