"""Side-by-side benchmark of the data engine: ``Store`` against raw ``sqlite3`` on the same rows.

    python bench/bench_store.py                        # 100k and 1M traces
    python bench/bench_store.py --sizes 20000 --dir /tmp/bench --keep

For each size N, two fresh databases with the same schema (Store's migrations, indexes
included). One is filled with ``Store.add_traces`` (one transaction per batch), the other with
``sqlite3`` ``executemany`` of the same rows: ids assigned by hand and JSON written with
``json.dumps``, the least work those rows can take. The batches alternate between the two, so a
burst of load from anything else on the machine slows both alike. The traces are real planner
runs of the home domain (their messages, model calls and tool calls), repeated over N/4 tasks x
4 samples by two teacher models. Scores and a dataset version (one trace per task) are then
written the same way into both (setup, not timed), and the same operations run both ways:

- list newest 20 / list all: what ``traces list`` reads (every column but the messages, with scores)
- filter newest 20 / filter all: ``--model openai:gpt-4o-mini --score gold_match>=1``
- export chat: the dataset version as OpenAI chat JSONL, as ``dataset export -o`` writes it
  (``dataengine.export.export_jsonl``: streamed, a batch of rows at a time)

Each operation runs ``--repeats`` times, taking turns; the median is reported. Prints the query
plans of the filters (they must use indexes and never sort the table) and ratios store/raw. It is
a measurement, not a test: nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: E402

from agent.backends import make_chat_model  # noqa: E402
from agent.run import run_request  # noqa: E402
from dataengine.curate import parse_condition  # noqa: E402
from dataengine.export import export_jsonl  # noqa: E402
from dataengine.query import TraceFilter  # noqa: E402
from dataengine.schema import TraceRow, utcnow  # noqa: E402
from dataengine.store import SUMMARY_COLUMNS, Store, TraceRecord  # noqa: E402
from tools.home.tasks import generate_tasks  # noqa: E402
from tools.registry import get_domain  # noqa: E402

SAMPLES = 4  # traces per task
MODELS = ("planner", "openai:gpt-4o-mini")  # two teachers, so that --model selects half
JSON_COLUMNS = {"context", "messages", "final_call"}
TRACE_COLUMNS = ("task_id", "job_id", "sample_index", "domain", "model", "input", "context", "messages", "final_call",
                 "status", "error", "latency_ms", "prompt_tokens", "completion_tokens", "model_calls", "label", "note",
                 "parent_trace_id", "thread_id")
SUMMARY_SQL = ", ".join(f"t.{c}" for c in SUMMARY_COLUMNS)
FILTER_MODEL, FILTER_SCORE = "openai:gpt-4o-mini", "gold_match>=1"


# ---- the rows ----------------------------------------------------------------------------------


def planner_templates(count: int) -> list[tuple[Any, Any]]:
    """``count`` real planner runs of home tasks: (task, TraceResult)."""
    domain = get_domain("home")
    model = make_chat_model("planner", domain=domain)
    tasks = generate_tasks(seed=1, n_train=count, n_dev=0, n_test=0)
    return [(task, run_request(domain, model, task.input, task.context)) for task in tasks]


@dataclass
class Workload:
    size: int
    templates: list[tuple[Any, Any]]

    @property
    def tasks(self) -> int:
        return self.size // SAMPLES

    def task_id(self, task: int) -> str:
        return f"bench-{task:07d}"

    def records(self, start: int, stop: int, job_id: int) -> list[TraceRecord]:
        """Traces start..stop-1: trace i is sample i % 4 of task i // 4, by teacher i % 2."""
        out = []
        for i in range(start, stop):
            task, result = self.templates[i % len(self.templates)]
            out.append(TraceRecord.from_result(
                result, domain="home", model=MODELS[i % 2], input=task.input, context=task.context,
                task_id=self.task_id(i // SAMPLES), job_id=job_id, sample_index=i % SAMPLES))
        return out


def raw_insert(conn: sqlite3.Connection, records: list[TraceRecord], first_id: int) -> None:
    """The same rows as ``Store.add_traces``, by hand: one transaction, three executemany."""
    now = utcnow()
    traces, model_calls, tool_calls = [], [], []
    for offset, r in enumerate(records):
        trace_id = first_id + offset
        traces.append((trace_id, *(json.dumps(getattr(r, c)) if c in JSON_COLUMNS and getattr(r, c) is not None
                                   else getattr(r, c) for c in TRACE_COLUMNS), now))
        for step, e in enumerate(r.model_events, start=1):
            model_calls.append((trace_id, step, e["prompt_tokens"], e["completion_tokens"], e.get("latency_ms"),
                                e.get("finish_reason"), e.get("model"),
                                None if e.get("logprobs") is None else json.dumps(e["logprobs"]), e.get("error")))
        for position, e in enumerate(r.tool_events):
            tool_calls.append((trace_id, e["step"], position, e["name"], json.dumps(e["args"]),
                               None if e["result"] is None else json.dumps(e["result"]), e["error"], e["latency_ms"]))
    with conn:
        conn.executemany(f"INSERT INTO traces (id, {', '.join(TRACE_COLUMNS)}, created_at) "
                         f"VALUES ({', '.join('?' * (len(TRACE_COLUMNS) + 2))})", traces)
        conn.executemany("INSERT INTO model_calls (trace_id, step, prompt_tokens, completion_tokens, latency_ms, "
                         "finish_reason, model, logprobs, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", model_calls)
        conn.executemany("INSERT INTO tool_calls (trace_id, step, position, name, args, result, error, latency_ms) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tool_calls)


def setup_rows(conn: sqlite3.Connection, work: Workload) -> None:
    """Tasks, one job, scores (gold_match: 3 of 4 samples pass) and the version ``bench@1`` (the
    first passing sample of each task): written the same way into both databases, not timed."""
    with conn:
        conn.executemany("INSERT INTO tasks (id, domain, split, input, context, gold, meta, created_at) "
                         "VALUES (?, 'home', 'train', ?, '{}', NULL, '{}', 'then')",
                         ((work.task_id(t), f"task {t}") for t in range(work.tasks)))
        conn.execute("INSERT INTO jobs (id, key, kind, domain, split, model, samples, temperature, seed, config, "
                     "status, created_at, updated_at) VALUES (1, 'bench', 'generate', 'home', 'train', 'planner', "
                     "4, 0.7, 0, '{}', 'done', 'then', 'then')")


def score_and_dataset(conn: sqlite3.Connection, work: Workload) -> None:
    with conn:
        conn.executemany("INSERT INTO scores (trace_id, scorer, value, details, created_at) "
                         "VALUES (?, 'gold_match', ?, '{}', 'then')",
                         ((i + 1, 0.0 if i % SAMPLES == 3 else 1.0) for i in range(work.size)))
        conn.execute("INSERT INTO datasets (id, name, version, domain, spec, created_at) "
                     "VALUES (1, 'bench', 1, 'home', '{\"method\": \"first passing sample\"}', 'then')")
        conn.executemany("INSERT INTO dataset_items (dataset_id, position, trace_id, task_id) VALUES (1, ?, ?, ?)",
                         ((t, t * SAMPLES + 1, work.task_id(t)) for t in range(work.tasks)))


def batches(size: int, batch: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, batch):
        yield start, min(start + batch, size)


# ---- the operations, both ways ------------------------------------------------------------------


def decoded(row: sqlite3.Row | tuple, columns: tuple[str, ...]) -> dict[str, Any]:
    return {c: json.loads(v) if c in JSON_COLUMNS and v is not None else v for c, v in zip(columns, row)}


def raw_summaries(conn: sqlite3.Connection, where: str, params: tuple, limit: int | None) -> list[dict[str, Any]]:
    """What trace_summaries returns, by hand: the rows, then their scores in one query."""
    order = f"ORDER BY t.id DESC LIMIT {limit}" if limit else "ORDER BY t.id"
    select = f"SELECT {SUMMARY_SQL} FROM traces t {where} {order}"
    rows = [decoded(r, SUMMARY_COLUMNS) for r in conn.execute(select, params)]
    scores: dict[int, dict[str, float]] = {}
    for trace_id, scorer, value in conn.execute(
            f"SELECT trace_id, scorer, value FROM scores WHERE trace_id IN (SELECT t.id FROM traces t {where} {order})",
            params):
        scores.setdefault(trace_id, {})[scorer] = value
    for row in rows:
        row["scores"] = scores.get(row["id"], {})
    return rows


RAW_FILTER = ("WHERE t.model = ? AND EXISTS (SELECT 1 FROM scores s WHERE s.trace_id = t.id "
              "AND s.scorer = 'gold_match' AND s.value >= 1)")


def raw_export(conn: sqlite3.Connection, out: Path, tools: list[dict]) -> int:
    """What dataset export writes, by hand."""
    rows = conn.execute("SELECT t.id, t.task_id, t.messages FROM dataset_items i JOIN traces t ON t.id = i.trace_id "
                        "WHERE i.dataset_id = 1 ORDER BY i.position")
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        for trace_id, task_id, messages in rows:
            messages = json.loads(messages)
            while messages and messages[-1]["role"] == "tool":
                messages.pop()
            handle.write(json.dumps({"messages": messages, "tools": tools, "metadata": {
                "dataset": "bench@1", "trace_id": trace_id, "task_id": task_id}}, ensure_ascii=False) + "\n")
            count += 1
    return count


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def compare(name: str, store_fn: Callable[[], Any], raw_fn: Callable[[], Any], repeats: int,
            check: Callable[[Any, Any], bool]) -> dict[str, Any]:
    """Median seconds of each, taking turns; ``check`` that both returned the same thing."""
    store_times, raw_times = [], []
    for _ in range(repeats):
        t_store, got_store = timed(store_fn)
        t_raw, got_raw = timed(raw_fn)
        store_times.append(t_store)
        raw_times.append(t_raw)
        if not check(got_store, got_raw):
            raise SystemExit(f"{name}: Store and raw sqlite3 disagree")
    return {"operation": name, "store": statistics.median(store_times), "raw": statistics.median(raw_times)}


def query_plan(conn: sqlite3.Connection, store: Store, where: TraceFilter) -> str:
    sql = str(store.select_traces(where, TraceRow.id).compile(store.engine, compile_kwargs={"literal_binds": True}))
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))


# ---- one size ----------------------------------------------------------------------------------


def bench_size(size: int, work_dir: Path, templates: list, batch: int, repeats: int, console: Console) -> list[dict]:
    work = Workload(size, templates)
    paths = {name: work_dir / f"{name}-{size}.db" for name in ("store", "raw")}
    for path in paths.values():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = Store(paths["store"])
    Store(paths["raw"]).engine.dispose()  # the same schema, then only sqlite3 touches it
    raw = sqlite3.connect(paths["raw"])
    raw.execute("PRAGMA journal_mode=WAL")  # as Store sets it: the same durability both ways
    raw.execute("PRAGMA foreign_keys=ON")
    store_conn = sqlite3.connect(paths["store"])
    setup_rows(store_conn, work)
    setup_rows(raw, work)

    # Ingest: the same batches, alternating.
    ingest = {"store": 0.0, "raw": 0.0}
    for start, stop in batches(size, batch):
        records = work.records(start, stop, job_id=1)
        ingest["store"] += timed(lambda: store.add_traces(records))[0]
        ingest["raw"] += timed(lambda: raw_insert(raw, records, first_id=start + 1))[0]
    rows = [{"operation": f"ingest (batches of {batch})", "store": ingest["store"], "raw": ingest["raw"],
             "rate": (size / ingest["store"], size / ingest["raw"])}]
    score_and_dataset(store_conn, work)
    score_and_dataset(raw, work)
    for conn in (store_conn, raw):
        conn.execute("ANALYZE")  # what a long-lived database has; the plans below hold without it too


    def same_rows(a: list[dict], b: list[dict]) -> bool:  # the same traces, and the first one alike but for its time
        def strip(rows: list[dict]) -> list[dict]:
            return [{k: v for k, v in row.items() if k != "created_at"} for row in rows[:1]]
        return [r["id"] for r in a] == [r["id"] for r in b] and strip(a) == strip(b)

    filter_where = TraceFilter(model=FILTER_MODEL, scores=[parse_condition(FILTER_SCORE)])
    newest = TraceFilter(limit=20)
    filtered_newest = TraceFilter(model=FILTER_MODEL, scores=[parse_condition(FILTER_SCORE)], limit=20)
    full_repeats = max(1, repeats if size <= 200_000 else 1)
    rows.append(compare("list newest 20", lambda: store.trace_summaries(newest),
                        lambda: raw_summaries(raw, "", (), 20), repeats, same_rows))
    rows.append(compare("list all", lambda: store.trace_summaries(TraceFilter()),
                        lambda: raw_summaries(raw, "", (), None), full_repeats, same_rows))
    rows.append(compare("filter newest 20", lambda: store.trace_summaries(filtered_newest),
                        lambda: raw_summaries(raw, RAW_FILTER, (FILTER_MODEL,), 20), repeats, same_rows))
    rows.append(compare("filter all", lambda: store.trace_summaries(filter_where),
                        lambda: raw_summaries(raw, RAW_FILTER, (FILTER_MODEL,), None), full_repeats, same_rows))
    domain = get_domain("home")
    tools = [convert_to_openai_tool(t) for t in domain.tools + domain.actions]
    out_store, out_raw = work_dir / f"store-{size}.jsonl", work_dir / f"raw-{size}.jsonl"
    rows.append(compare(f"export chat ({work.tasks:,} items)",
                        lambda: export_jsonl(store, "bench@1", "chat", out_store) and len(out_store.read_bytes()),
                        lambda: raw_export(raw, out_raw, tools) and len(out_raw.read_bytes()), full_repeats,
                        lambda a, b: a == b))

    console.print(f"[bold]N = {size:,}[/] query plans (Store's SQL):")
    for label, where in (("  filter newest 20", filtered_newest), ("  --model", TraceFilter(model=FILTER_MODEL,
                                                                                              limit=20)),
                         ("  --split", TraceFilter(split="train", limit=20))):
        console.print(f"{label}: {query_plan(store_conn, store, where)}", markup=False, highlight=False)
    for conn in (store_conn, raw):
        conn.close()
    store.engine.dispose()
    for path in (out_store, out_raw):
        path.unlink(missing_ok=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="trace counts, comma-separated")
    parser.add_argument("--batch", type=int, default=5000, help="traces per add_traces call (one transaction)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per operation (full scans: 1 above 200k)")
    parser.add_argument("--templates", type=int, default=64, help="distinct real planner runs to repeat")
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args()
    console = Console(width=160)
    work_dir = args.dir or Path(tempfile.mkdtemp(prefix="supertiny-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    templates = planner_templates(args.templates)
    load_before = os.getloadavg()[0]
    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        results[size] = bench_size(size, work_dir, templates, args.batch, args.repeats, console)
        console.print(f"[dim]N = {size:,} took {time.perf_counter() - started:.0f} s[/]")
        if not args.keep:
            for path in work_dir.glob(f"*-{size}.db*"):
                path.unlink()
    load_after = os.getloadavg()[0]

    table = Table(title="Store vs raw sqlite3 on the same rows (seconds; median of the runs)")
    for column in ("operation", *(f"{name} {size:,}" for size in results for name in ("store", "raw", "ratio"))):
        table.add_column(column, justify="left" if column == "operation" else "right")
    operations = [row["operation"] for row in next(iter(results.values()))]
    for index, operation in enumerate(operations):
        cells = []
        for rows in results.values():
            row = rows[index]
            cells += [f"{row['store']:.3f}", f"{row['raw']:.3f}", f"{row['store'] / row['raw']:.2f}x"]
        table.add_row(operation.split(" (")[0] if "export" not in operation else "export chat", *cells)
    console.print(table)
    for size, rows in results.items():
        store_rate, raw_rate = rows[0]["rate"]
        console.print(f"ingest at N = {size:,}: Store {store_rate:,.0f} traces/s, raw sqlite3 {raw_rate:,.0f} "
                      f"traces/s: Store at {store_rate / raw_rate:.0%} of raw (goal >= 50%); export: "
                      f"{rows[-1]['operation'].split('(')[1].rstrip(')')}")
    console.print("ratio = Store time / raw time (1.00x: no overhead). A trace here: 6 messages, 2 model calls, "
                  "1-2 tool calls, as the planner writes them.")
    cores = os.cpu_count() or 1
    if max(load_before, load_after) > cores:
        console.print(f"[yellow]load average {load_before:.1f} -> {load_after:.1f} on {cores} cores: other processes "
                      "were competing for the CPU; absolute times are inflated, ratios less so.[/yellow]")
    if not args.keep and args.dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
