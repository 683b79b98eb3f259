"""Batch generation jobs against the real world: a real OpenAI-compatible server on 127.0.0.1 that
fails about a fifth of its requests (429, 500, timeouts, garbage bodies, dropped connections) and
otherwise plays the home domain's agent; real SQLite files; the CLI as a subprocess that we kill -9,
interrupt with SIGINT and cancel from another process."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from langchain_core.messages import convert_to_messages

from agent.batch import GenerateConfig, JobCancelled, JobRefused, generate, idempotency_key, resume
from agent.planner import HomePlannerChatModel
from agent.pricing import BUILTIN_PRICES, Price, find_price
from agent.resilience import RateLimiter, RetryPolicy, TokenBucket, classify, retry_after_seconds
from dataengine.store import Store
from supertiny.testing import ScriptedOpenAIServer
from tools.home.tasks import generate_tasks

TIMEOUT = 1.0  # the client's per-request timeout in these tests; a "timeout" fault answers later than this
FAULTS = {  # error kind as recorded in attempts -> the step the server plays
    "rate_limit": {"status": 429, "body": "Rate limit reached for requests", "retry_after": 0.01},
    "server_error": {"status": 500, "body": "the model server crashed"},
    "timeout": {"content": "too late", "delay": TIMEOUT * 3},
    "bad_response": {"raw": "<html>502 Bad Gateway</html>"},
    "connection": {"disconnect": True},
}


class FaultyHomeEndpoint:
    """A ``ScriptedOpenAIServer`` responder: fails ``fault_rate`` of the requests with one of
    ``FAULTS`` (counted in ``injected``), and answers the rest as the home domain's offline planner
    would, reading the conversation the client sent (tool results included)."""

    def __init__(self, fault_rate: float = 0.2, seed: int = 0, always_fail: str | None = None, delay: float = 0.0):
        self.fault_rate, self.always_fail, self.delay = fault_rate, always_fail, delay
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.answered = 0

    def __call__(self, body: dict) -> dict:
        request = body["messages"][1]["content"]
        with self.lock:
            kind = self.rng.choice(sorted(FAULTS))
            fail = self.rng.random() < self.fault_rate or (self.always_fail is not None and self.always_fail in request)
            if fail:
                self.injected["server_error" if self.always_fail else kind] += 1
            else:
                self.answered += 1
        if fail:
            return FAULTS["server_error"] if self.always_fail else FAULTS[kind]
        planner = HomePlannerChatModel(temperature=body.get("temperature") or 0.0, seed=body.get("seed") or 0)
        reply = planner.invoke(convert_to_messages(body["messages"]), seed=body.get("seed") or 0)
        step = ({"tool_calls": [{"name": c["name"], "arguments": c["args"], "id": c["id"]} for c in reply.tool_calls]}
                if reply.tool_calls else {"content": reply.content or "I cannot do that."})
        return {**step, "delay": self.delay} if self.delay else step


def query(db, sql, *params):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def assert_complete(db, job_id, expected):
    """``expected`` traces, one per (task, sample), each with its model calls; the file intact."""
    assert query(db, "select count(*) from traces where job_id = ?", job_id)[0][0] == expected
    assert query(db, "select count(*) from (select 1 from traces where job_id = ? group by task_id, sample_index "
                     "having count(*) > 1)", job_id)[0][0] == 0
    assert query(db, "select count(*) from traces t where job_id = ? and not exists "
                     "(select 1 from model_calls m where m.trace_id = t.id)", job_id)[0][0] == 0
    assert query(db, "pragma integrity_check")[0][0] == "ok"


def endpoint_config(server, **overrides) -> GenerateConfig:
    settings = dict(split="train", samples=2, model="openai:gpt-4o-mini", base_url=server.base_url, api_key="k",
                    concurrency=8, max_attempts=8, retry_delay=0.01, model_options={"timeout": TIMEOUT})
    return GenerateConfig(**{**settings, **overrides})


# ---- the parts: limiter, backoff, failure kinds, prices ---------------------------------------


def test_the_rate_limiter_keeps_requests_and_tokens_per_minute():
    clock = [0.0]

    async def sleep(seconds):  # a fake clock: the test takes no wall time
        clock[0] += seconds

    async def send(limiter, n, tokens):
        sent = []
        for _ in range(n):
            await limiter.acquire(tokens)
            sent.append(clock[0])
        return sent

    rpm = RateLimiter(rpm=120, clock=lambda: clock[0], sleep=sleep)  # 2 a second, at most 2 saved up
    sent = asyncio.run(send(rpm, 10, 1))
    assert sent[:2] == [0.0, 0.0] and sent[-1] == pytest.approx(4.0)  # 2 at once, then one every 0.5 s
    clock[0] = 0.0
    tpm = RateLimiter(tpm=6000, clock=lambda: clock[0], sleep=sleep)  # 100 tokens a second
    sent = asyncio.run(send(tpm, 4, 250))  # bigger than the bucket: each waits for a full bucket, then owes
    assert sent == pytest.approx([0.0, 2.5, 5.0, 7.5])
    tpm.settle(estimated=250, actual=50)  # the response used less: the rest comes back
    assert tpm.tokens.level == pytest.approx(-150 + 200)
    tpm.pause(3.0)  # a 429 that said "retry after 3 s" holds everyone back
    assert asyncio.run(send(tpm, 1, 1)) == [pytest.approx(10.5)]
    assert TokenBucket(60, now=0).capacity == 1.0  # slow limits save up at least one request


def test_backoff_grows_with_jitter_and_retry_after_wins():
    policy, rng = RetryPolicy(base_delay=1.0, max_delay=8.0), random.Random(0)
    for failed in range(1, 8):
        delays = [policy.delay(failed, None, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= min(8.0, 2 ** (failed - 1))
        assert len(set(delays)) > 100  # jitter: samples that failed together come back apart
    assert policy.delay(3, retry_after=0.25, rng=rng) == 0.25
    assert policy.delay(3, retry_after=600, rng=rng) == 8.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None
    # What a garbage body surfaces as is worth a retry; a bug of ours is not.
    assert classify(json.JSONDecodeError("Expecting value", "<html>", 0)).kind == "bad_response"
    assert classify(json.JSONDecodeError("Expecting value", "<html>", 0)).retryable
    assert not classify(RuntimeError("Event loop is closed")).retryable


def test_prices_come_from_the_database_first_then_the_builtin_table():
    assert find_price("openai:gpt-4o-mini") == BUILTIN_PRICES["gpt-4o-mini"]
    assert find_price("openai:gpt-4o-mini-2024-07-18") == BUILTIN_PRICES["gpt-4o-mini"]  # a dated snapshot
    assert find_price("openai:gpt-4o-mini-pro") is None  # a different model is not a snapshot
    assert find_price("openai:Qwen/Qwen2.5-7B-Instruct") is None
    own = {"openai:Qwen/Qwen2.5-7B-Instruct": Price(0.0, 0.0), "gpt-4o-mini": Price(1.0, 2.0)}
    assert find_price("openai:Qwen/Qwen2.5-7B-Instruct", own) == Price(0.0, 0.0)
    assert find_price("openai:gpt-4o-mini", own) == Price(1.0, 2.0)
    assert Price(0.15, 0.60).cost(1_000_000, 500_000) == pytest.approx(0.45)


# ---- jobs against a faulty endpoint, in process -----------------------------------------------


def test_a_job_against_a_faulty_endpoint_completes_and_records_every_failure(store):
    store.add_tasks(generate_tasks(seed=0, n_train=20, n_dev=0, n_test=0))
    endpoint = FaultyHomeEndpoint(fault_rate=0.2, seed=1)
    progress = []
    with ScriptedOpenAIServer(endpoint) as server:
        # Limits far above what this test sends: the limiter is in the path, the test stays fast.
        counts = generate(store, endpoint_config(server, rpm=600_000, tpm=100_000_000), on_progress=progress.append)
    assert server.script_errors == []
    assert counts["status"] == "done" and counts["total"] == counts["new"] == 40 and counts["errors"] == 0
    assert_complete(store.path, counts["job_id"], 40)
    assert query(store.path, "select count(*) from traces where status = 'ok'")[0][0] >= 36  # the planner is imperfect
    assert sum(endpoint.injected.values()) >= 10, endpoint.injected

    # Every request the server saw is one attempt, and every injected fault one failed attempt of its kind.
    attempts = query(store.path, "select error_kind, http_status, error, trace_id, idempotency_key, prompt_tokens,"
                                 " completion_tokens from attempts where job_id = ?", counts["job_id"])
    assert len(attempts) == len(server.requests) == counts["attempts"]
    # A loaded machine may time out an honest answer too, so timeouts are at least those injected.
    kinds = Counter(kind for kind, *_ in attempts if kind)
    assert {k: n for k, n in kinds.items() if k != "timeout"} == \
        {k: n for k, n in endpoint.injected.items() if k != "timeout"}
    assert kinds["timeout"] >= endpoint.injected["timeout"]
    assert all(status == 429 for kind, status, *_ in attempts if kind == "rate_limit")
    assert all(status == 500 for kind, status, *_ in attempts if kind == "server_error")
    assert all("Timeout" in error for kind, _, error, *_ in attempts if kind == "timeout")
    assert all(trace_id is not None for *_, trace_id, _, _, _ in attempts)  # nothing abandoned
    # One key per (task, sample): the same in every attempt of the sample, different across samples.
    keys = dict(query(store.path, "select t.task_id || '/' || t.sample_index, count(distinct a.idempotency_key) "
                                  "from attempts a join traces t on t.id = a.trace_id group by t.id"))
    assert len(keys) == 40 and set(keys.values()) == {1}
    job_key = query(store.path, "select key from jobs where id = ?", counts["job_id"])[0][0]
    task_id = store.tasks(split="train")[0].id
    assert query(store.path, "select count(*) from attempts a join traces t on t.id = a.trace_id where t.task_id = ? "
                             "and t.sample_index = 1 and a.idempotency_key = ?",
                 task_id, idempotency_key(job_key, task_id, 1))[0][0] >= 1

    # The job's counters agree with its rows, and its cost is its tokens at gpt-4o-mini's price.
    job = store.existing_job(counts["job_id"])
    prompt, completion = query(store.path, "select sum(prompt_tokens), sum(completion_tokens) from attempts")[0]
    assert (job.samples_done, job.samples_error, job.attempts_failed) == (40, 0, sum(kinds.values()))
    assert (job.prompt_tokens, job.completion_tokens) == (prompt, completion) and prompt > 0
    assert job.cost_usd == pytest.approx(BUILTIN_PRICES["gpt-4o-mini"].cost(prompt, completion))
    assert prompt == query(store.path, "select sum(prompt_tokens) from traces")[0][0]  # failed attempts cost nothing here
    assert progress[-1].done == 40 and progress[-1].failed_attempts == job.attempts_failed


def test_a_sample_whose_every_attempt_fails_is_an_error_trace_that_resume_replaces(store):
    store.add_tasks(generate_tasks(seed=0, n_train=6, n_dev=0, n_test=0))
    broken = store.tasks(split="train")[2]
    with ScriptedOpenAIServer(FaultyHomeEndpoint(fault_rate=0.0, always_fail=broken.input)) as server:
        first = generate(store, endpoint_config(server, max_attempts=3))
    assert first["errors"] == 2 and first["not_ok"] >= 2  # both samples of the broken task
    errors = query(store.path, "select id, sample_index, error from traces where status = 'error'")
    assert {s for _, s, _ in errors} == {0, 1} and all("500" in e and "crashed" in e for *_, e in errors)
    assert query(store.path, "select count(*) from attempts where error_kind = 'server_error'")[0][0] == 6  # 2 x 3 tries

    with ScriptedOpenAIServer(FaultyHomeEndpoint(fault_rate=0.0)) as server:  # the endpoint has recovered
        again = generate(store, endpoint_config(server, max_attempts=3))
    assert again["job_id"] == first["job_id"] and again["new"] == again["retried"] == 2 and again["errors"] == 0
    assert_complete(store.path, first["job_id"], 12)
    replaced = query(store.path, "select id, status, error from traces where task_id = ? order by id", broken.id)
    assert [i for i, *_ in replaced] == sorted(i for i, *_ in errors)  # replaced in place: same ids, no new rows
    assert all(status != "error" and error is None for _, status, error in replaced)
    # The failed run's attempts stay on record, no longer tied to the trace that replaced it.
    assert query(store.path, "select count(*) from attempts where error_kind = 'server_error' "
                             "and trace_id is null")[0][0] == 6
    assert store.existing_job(first["job_id"]).samples_error == 0


def test_an_endpoint_that_refuses_us_stops_the_job_without_error_traces(store):
    store.add_tasks(generate_tasks(seed=0, n_train=10, n_dev=0, n_test=0))
    with ScriptedOpenAIServer(FaultyHomeEndpoint(fault_rate=0.0), api_key="the right key") as server:
        with pytest.raises(JobRefused, match="401"):
            generate(store, endpoint_config(server, api_key="a wrong key", concurrency=2))
        assert query(store.path, "select count(*) from traces")[0][0] == 0
        assert query(store.path, "select count(*) from attempts where http_status = 401")[0][0] >= 1
        job = store.jobs()[0]
        assert job.status == "interrupted" and "refused" in job.stop_reason
        counts = resume(store, job.id, api_key="the right key")  # fixed: the same job runs to the end
    assert counts["job_id"] == job.id and counts["status"] == "done"
    assert_complete(store.path, job.id, 20)


def test_a_cancelled_job_is_not_rerun_by_its_command_but_by_jobs_resume(store):
    store.add_tasks(generate_tasks(seed=0, n_train=3, n_dev=0, n_test=0))
    config = GenerateConfig(split="train", samples=1)
    with pytest.raises(Exception):  # nothing to cancel in a done job
        store.cancel_job(generate(store, config)["job_id"])
    store.add_tasks(generate_tasks(seed=0, n_train=6, n_dev=0, n_test=0))  # the split grew: the job has work again
    job_id = store.jobs()[0].id
    store.stop_job(job_id, "interrupted", "test")
    store.cancel_job(job_id)
    with pytest.raises(Exception, match="was cancelled; `supertiny jobs resume"):
        generate(store, config)
    assert resume(store, job_id)["status"] == "done" and store.existing_job(job_id).samples_done == 6


def test_worker_processes_share_a_job_stop_together_and_their_counters_add_up(store):
    store.add_tasks(generate_tasks(seed=0, n_train=20, n_dev=0, n_test=0))
    endpoint = FaultyHomeEndpoint(fault_rate=0.2, seed=2)
    with ScriptedOpenAIServer(endpoint, api_key="the right key") as server:
        with pytest.raises(JobRefused, match="401"):  # a worker refused: the job stops, every worker with it
            generate(store, endpoint_config(server, api_key="a wrong key", workers=2))
        job = store.jobs()[0]
        assert job.status == "interrupted" and "refused" in job.stop_reason and job.samples_done == 0
        assert query(store.path, "select count(*) from traces")[0][0] == 0

        # `jobs cancel` (here from a thread) stops every worker of a resumed run (--workers 2: the job's setting).
        def cancel_when_running():
            while query(store.path, "select count(*) from traces")[0][0] < 3:
                time.sleep(0.02)
            store.cancel_job(job.id)

        endpoint.delay = 0.2
        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        with pytest.raises(JobCancelled):
            resume(store, job.id, api_key="the right key")
        canceller.join()
        stopped = query(store.path, "select count(*) from traces")[0][0]
        assert store.existing_job(job.id).status == "cancelled" and store.existing_job(job.id).samples_done == stopped < 40

        endpoint.delay, endpoint.injected = 0.0, Counter()
        before, last_attempt = len(server.requests), query(store.path, "select max(id) from attempts")[0][0]
        progress = []
        counts = resume(store, job.id, on_progress=progress.append, api_key="the right key")
    assert counts["status"] == "done" and counts["new"] == 40 - stopped and counts["errors"] == 0
    assert_complete(store.path, job.id, 40)
    job = store.existing_job(job.id)
    assert job.config["run"]["workers"] == 2 and job.pid is None
    # Two processes, two connections, one set of counters: they add up to the rows all the runs wrote.
    assert (job.samples_done, job.attempts, job.attempts_failed, job.prompt_tokens, job.completion_tokens) == query(
        store.path, "select (select count(*) from traces), count(*), sum(error is not null), sum(prompt_tokens), "
                    "sum(completion_tokens) from attempts")[0]
    assert counts["attempts"] == len(server.requests) - before  # this run's requests, each one attempt
    # Every fault injected in this run is a failed attempt of its kind (a loaded machine may time out more).
    kinds = Counter(kind for (kind,) in query(store.path, "select error_kind from attempts where id > ?",
                                              last_attempt) if kind)
    assert {k: n for k, n in kinds.items() if k != "timeout"} == \
        {k: n for k, n in endpoint.injected.items() if k != "timeout"}
    assert kinds["timeout"] >= endpoint.injected["timeout"]
    assert progress[0].done == stopped and progress[-1].done == 40 and progress[-1].attempts == job.attempts


# ---- the CLI as a process: kill -9, two writers, Ctrl-C, cancel ---------------------------------


def cli(db, *args):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}, "SUPERTINY_DB": str(db)}
    return [sys.executable, "-m", "supertiny.cli", *args], env


def run_cli(db, *args, check=True):
    command, env = cli(db, *args)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def traces_of(db) -> int:
    try:
        return query(db, "select count(*) from traces")[0][0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def wait_for_traces(db, at_least, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if traces_of(db) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"never reached {at_least} traces (now {traces_of(db)}, exit {proc.poll()})")


def generate_command(server, *extra):
    return ("agent", "generate", "--split", "train", "--samples", "2", "--model", "openai:gpt-4o-mini",
            "--base-url", server.base_url, "--api-key", "k", "--timeout", str(TIMEOUT), "--retry-delay", "0.01",
            "--max-attempts", "8", *extra)


def test_killing_a_job_three_times_then_resuming_loses_and_duplicates_nothing(tmp_path):
    db = tmp_path / "crash.db"
    Store(db).add_tasks(generate_tasks(seed=0, n_train=40, n_dev=0, n_test=0))
    rng = random.Random(7)
    # A slow, faulty endpoint, so that each kill lands mid-run (between or during writes, mid-request).
    with ScriptedOpenAIServer(FaultyHomeEndpoint(fault_rate=0.2, seed=3, delay=0.05)) as server:
        command, env = cli(db, *generate_command(server, "--concurrency", "4"))
        for _ in range(3):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_traces(db, traces_of(db) + rng.randint(1, 12), proc)
            time.sleep(rng.random() * 0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert query(db, "pragma integrity_check")[0][0] == "ok"
        partial = traces_of(db)
        assert 0 < partial < 80, "the kills must land mid-run"
        assert query(db, "select status from jobs")[0][0] == "running"  # killed: it had no chance to say otherwise
        resumed = json.loads(run_cli(db, "jobs", "resume", "1", "--api-key", "k", "--concurrency", "16",
                                     "--json").stdout)[0]
    assert resumed["job_id"] == 1 and resumed["status"] == "done" and resumed["new"] == 80 - partial
    assert_complete(db, 1, 80)
    assert query(db, "select count(*) from jobs")[0][0] == 1


def test_two_jobs_writing_one_database_at_once(tmp_path):
    db = tmp_path / "shared.db"
    Store(db).add_tasks(generate_tasks(seed=0, n_train=100, n_dev=0, n_test=0))
    procs = []
    for seed in ("1", "2"):  # two jobs (their settings differ), two processes, one file
        command, env = cli(db, "agent", "generate", "--samples", "2", "--seed", seed, "--concurrency", "8")
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "locked" not in err, err
    assert [row[0] for row in query(db, "select samples_done from jobs order by id")] == [200, 200]
    for job_id in (1, 2):
        assert_complete(db, job_id, 200)


def test_ctrl_c_interrupts_cleanly_and_cancel_stops_a_resumed_job(tmp_path):
    db = tmp_path / "stop.db"
    store = Store(db)
    store.add_tasks(generate_tasks(seed=0, n_train=40, n_dev=0, n_test=0))
    endpoint = FaultyHomeEndpoint(fault_rate=0.1, seed=5, delay=0.05)
    with ScriptedOpenAIServer(endpoint) as server:
        command, env = cli(db, *generate_command(server, "--concurrency", "4"))
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_traces(db, 5, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert err.strip().splitlines()[-1].startswith("Interrupted: job 1 interrupted by SIGINT with ")
        assert "resume with `supertiny" in err and "jobs resume 1`" in err
        job = store.existing_job(1)
        assert job.status == "interrupted" and job.stop_reason == "interrupted by SIGINT" and job.pid is None
        stored = traces_of(db)
        assert job.samples_done == stored < 80
        # What was in flight was abandoned, not lost from the record: its attempts are stored.
        assert query(db, "select count(*) from attempts where error_kind = 'abandoned'")[0][0] >= 1
        assert query(db, "select count(*) from attempts where trace_id is null")[0][0] >= 1

        # Resume it, then cancel it from another process while it runs (slowly: the cancel must land mid-run).
        endpoint.delay = 0.3
        command, env = cli(db, "jobs", "resume", "1", "--concurrency", "2", "--api-key", "k")
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_traces(db, stored + 3, proc)
        run_cli(db, "jobs", "cancel", "1")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "Stopped: job 1 cancelled with" in err
        after_cancel = traces_of(db)
        time.sleep(1.5)
        assert traces_of(db) == after_cancel < 80  # nothing runs it any more
        assert store.existing_job(1).status == "cancelled"
        endpoint.delay = 0.01
        finished = json.loads(run_cli(db, "jobs", "resume", "1", "--api-key", "k", "--concurrency", "16",
                                      "--json").stdout)[0]
    assert finished["status"] == "done" and finished["total"] == 80
    assert_complete(db, 1, 80)


def spawned_workers(pid: int) -> list[int]:
    """The worker processes (multiprocessing spawn children) of process ``pid``."""
    found = []
    for stat in os.listdir("/proc"):
        try:
            ppid = int(open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in open(f"/proc/{stat}/cmdline", "rb").read():
                found.append(int(stat))
        except (OSError, ValueError, IndexError):  # not a process, or gone meanwhile
            continue
    return found


def gone(pids, timeout=30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1][:3]
                   for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker processes through /proc")
def test_worker_processes_stop_on_ctrl_c_and_with_their_killed_main_process(tmp_path):
    db = tmp_path / "workers.db"
    store = Store(db)
    store.add_tasks(generate_tasks(seed=0, n_train=40, n_dev=0, n_test=0))
    endpoint = FaultyHomeEndpoint(fault_rate=0.1, seed=6, delay=0.05)
    with ScriptedOpenAIServer(endpoint) as server:
        # Ctrl-C to the main process alone (as `kill -INT` sends it): it passes the stop on to its workers.
        command, env = cli(db, *generate_command(server, "--concurrency", "4", "--workers", "2"))
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_traces(db, 5, proc)
        workers = spawned_workers(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Interrupted: job 1 interrupted by SIGINT with " in err, err
        job = store.existing_job(1)
        assert job.status == "interrupted" and job.samples_done == traces_of(db) < 80 and gone(workers, timeout=5)

        # kill -9 of the main process: its workers find themselves orphaned and stop within seconds.
        command, env = cli(db, "jobs", "resume", "1", "--api-key", "k")  # --workers 2: the job's own setting
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_traces(db, traces_of(db) + 3, proc)
        workers = spawned_workers(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(workers) == 2 and gone(workers)
        settled = traces_of(db)
        time.sleep(1.5)
        assert traces_of(db) == settled < 80  # nothing runs it any more

        endpoint.delay = 0.01
        finished = json.loads(run_cli(db, "jobs", "resume", "1", "--api-key", "k", "--concurrency", "16",
                                      "--json").stdout)[0]
    assert finished["status"] == "done" and finished["total"] == 80
    assert_complete(db, 1, 80)
    job = store.existing_job(1)
    assert (job.samples_done, job.attempts) == (80, query(db, "select count(*) from attempts")[0][0])
