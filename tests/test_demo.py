"""``supertiny demo --quick``: the whole chain, as CI exercises it."""
import json
import os
import sqlite3
import subprocess
import sys


def test_quick_demo_runs_every_stage_and_records_lineage(tmp_path):
    db, out = tmp_path / "demo.db", tmp_path / "artifacts"
    env = {**os.environ, "SUPERTINY_DB": str(db), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "supertiny.cli", "demo", "--quick", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("tasks", "teacher traces", "verify", "dataset", "student SFT", "prune + heal + quantize", "evaluate"):
        assert stage in proc.stdout
    with sqlite3.connect(db) as conn:
        traces = conn.execute("select count(*) from traces").fetchone()[0]
        labels = {r[0] for r in conn.execute("select distinct model_label from evaluations where split = 'test'")}
        slices = {r[0] for r in conn.execute("select distinct slice from evaluations")}
        chain = conn.execute("""
            select q.kind, h.kind, p.kind, s.kind, s.dataset_id, b.kind
            from models q join models h on h.id = q.parent_id join models p on p.id = h.parent_id
            join models s on s.id = p.parent_id join models b on b.id = s.parent_id
            where q.kind = 'quantized'""").fetchone()
        rows = conn.execute("select model_label, exact_match, tokens_per_request, calls_per_request from evaluations "
                            "where split = 'test' and slice = 'all'").fetchall()
    assert traces == 150 * 2
    assert labels == {"teacher", "base", "student", "compressed"}
    assert slices >= {"all", "seen", "novel"}
    assert chain[:4] == ("quantized", "healed", "pruned", "student") and chain[4] is not None and chain[5] == "base"
    metrics = {label: (em, tokens, calls) for label, em, tokens, calls in rows}
    assert metrics["teacher"][0] > 0.6 and metrics["teacher"][2] >= 2
    # the point of the student: one generation (two when the tools reject its greedy plan and it
    # samples more), fewer than the teacher's calls, and a small fraction of the teacher's tokens
    assert 1 <= metrics["student"][2] <= 2 and metrics["student"][2] < metrics["teacher"][2]
    assert metrics["student"][1] < metrics["teacher"][1] / 10
    manifest = json.loads((out / "quick" / "compressed" / "supertiny_manifest.json").read_text())
    assert manifest["method"] == "onnx-int8" and (out / "quick" / "compressed" / "model.onnx").is_file()
