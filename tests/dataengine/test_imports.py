"""Import jobs keep their counters like generate jobs do: `jobs list` / `jobs status` show how many
samples an import stored, on a real SQLite file, in process and through the CLI."""
import json
import sqlite3

from tests.test_cli import run
from tools.home.tasks import generate_tasks


def conversation(request: str, action: dict | None, **extra) -> dict:
    messages = [{"role": "user", "content": request}]
    if action is not None:
        messages.append({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": action["name"], "arguments": json.dumps(action["arguments"])}}]})
    else:
        messages.append({"role": "assistant", "content": "I cannot do that."})
    return {"messages": messages, **extra}


def write_log(path, conversations) -> None:
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations), encoding="utf-8")


def job_row(db, job_id):
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("select * from jobs where id = ?", (job_id,)).fetchone())


def test_an_import_job_counts_its_samples_and_a_reimport_leaves_the_counts_right(store, tmp_path):
    task = generate_tasks(seed=0, n_train=1, n_dev=0, n_test=0)[0]
    store.add_tasks([task])
    log = tmp_path / "log.jsonl"
    write_log(log, [
        conversation("kitchen lights off", {"name": "control_device",
                                            "arguments": {"device_id": "light.kitchen", "action": "off"}}),
        conversation("timer 20 min — 🍕", {"name": "set_timer", "arguments": {"duration": "PT20M"}},
                     task_id=task.id),
        conversation("sing me a song", None),  # no action: stored as a no_call trace
    ])
    first = store.import_chat_log(log, "home", "openai:gpt-4o")
    job = store.job(first["job_id"])
    assert job.kind == "import" and job.status == "done"
    assert (job.samples_total, job.samples_done, job.samples_error) == (3, 3, 0)
    assert job.attempts == job.attempts_failed == 0  # an import makes no requests

    again = store.import_chat_log(log, "home", "openai:gpt-4o")
    assert again["job_id"] == job.id and again["imported"] == 0
    assert (store.job(job.id).samples_total, store.job(job.id).samples_done) == (3, 3)  # not 6

    other = tmp_path / "other.jsonl"  # another file is another job, with counters of its own
    write_log(other, [conversation("alarm at 7", {"name": "set_alarm", "arguments": {"time": "07:00"}})])
    second = store.import_chat_log(other, "home", "openai:gpt-4o")
    assert second["job_id"] != job.id
    assert (store.job(second["job_id"]).samples_total, store.job(second["job_id"]).samples_done) == (1, 1)
    assert (store.job(job.id).samples_total, store.job(job.id).samples_done) == (3, 3)


def test_traces_import_shows_its_progress_in_jobs_list(tmp_path):
    db, log = tmp_path / "cli.db", tmp_path / "log.jsonl"
    write_log(log, [conversation(f"lights off in room {i}", {"name": "control_device", "arguments": {
        "device_id": f"light.room_{i}", "action": "off"}}) for i in range(4)])
    imported = json.loads(run(["traces", "import", str(log), "--model", "openai:gpt-4o", "--json"], db,
                              check=True).stdout)[0]
    listed = json.loads(run(["jobs", "list", "--json"], db, check=True).stdout)
    assert [(j["id"], j["kind"], j["status"], j["progress"]) for j in listed] == \
        [(imported["job_id"], "import", "done", "4/4")]
    assert job_row(db, imported["job_id"])["samples_done"] == 4
