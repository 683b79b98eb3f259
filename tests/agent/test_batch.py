import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from agent.batch import GenerateConfig, _InlineExecutor, generate
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


def test_inline_default_executor_runs_work_in_place_but_name_lookups_on_a_thread(monkeypatch):
    """What an openai: job makes its loop's default executor: langchain-openai's response parse
    skips the thread hop; a DNS lookup, which blocks on the network, still leaves the loop."""
    looked_up_on = []

    def fake_getaddrinfo(host, port, *args, **kwargs):
        looked_up_on.append(threading.get_ident())
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(_InlineExecutor())
        assert await loop.run_in_executor(None, threading.get_ident) == threading.get_ident()
        with pytest.raises(ValueError):  # the work's own error reaches the awaiting coroutine
            await loop.run_in_executor(None, int, "not a number")
        assert (await loop.getaddrinfo("api.example", 443))[0][4] == ("127.0.0.1", 443)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(looked_up_on) == 1 and looked_up_on[0] != loop_thread
