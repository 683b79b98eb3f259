import os
import signal
import sqlite3
import subprocess
import sys
import time

from agent.batch import GenerateConfig, generate
from dataengine.store import Store
from tools.home.tasks import generate_tasks


def _counts(db):
    with sqlite3.connect(db) as conn:
        total = conn.execute("select count(*) from traces").fetchone()[0]
        dupes = conn.execute("select count(*) from (select task_id, sample_index from traces "
                             "group by job_id, task_id, sample_index having count(*) > 1)").fetchone()[0]
    return total, dupes


def test_generate_is_resumable_and_idempotent(store: Store):
    store.add_tasks(generate_tasks(seed=0, n_train=12, n_dev=0, n_test=0))
    first = generate(store, GenerateConfig(split="train", samples=3, concurrency=4))
    assert first["total"] == 36 and first["new"] == 36
    again = generate(store, GenerateConfig(split="train", samples=3, concurrency=4))
    assert again["job_id"] == first["job_id"] and again["new"] == 0
    assert _counts(store.path) == (36, 0)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("select count(*) from tool_calls").fetchone()[0] >= 36
        assert conn.execute("select count(*) from model_calls").fetchone()[0] >= 36


def test_killing_generate_mid_run_then_rerunning_loses_and_duplicates_nothing(tmp_path):
    db = tmp_path / "kill.db"
    env = {**os.environ, "SUPERTINY_DB": str(db)}
    cli = [sys.executable, "-m", "supertiny.cli"]
    subprocess.run(cli + ["tasks", "generate", "--train", "300", "--dev", "0", "--test", "0"], env=env, check=True,
                   capture_output=True)
    command = cli + ["agent", "generate", "--split", "train", "--samples", "2", "--concurrency", "4"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if db.exists() and _counts(db)[0] >= 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial, _ = _counts(db)
    assert 0 < partial < 600, "the kill must land mid-run"
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert _counts(db) == (600, 0)
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        # every trace that exists is complete: it has its model calls
        assert conn.execute("select count(*) from traces t where not exists "
                            "(select 1 from model_calls m where m.trace_id = t.id)").fetchone()[0] == 0
