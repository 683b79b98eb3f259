"""SFT checkpoints: a training run killed with -9 resumes from its last checkpoint and ends at
the same step count, with the checkpoints cleaned up once the model is saved."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from student.manifest import read_manifest
from student.train import last_checkpoint
from tests.student.tiny_student import EXAMPLES, tiny_model

TRAIN = """
import json, sys
from student.train import SFTRunConfig, train_student
examples, config = json.loads(sys.argv[1]), SFTRunConfig(**json.loads(sys.argv[2]))
train_student(examples, config)
"""


def run_training(config: dict, wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, json.dumps(EXAMPLES * 10), json.dumps(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    return proc


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "student"
    config = {"base_model": str(tiny_model(tmp_path / "base")), "output_dir": str(out), "learning_rate": 3e-3,
              "max_steps": 150, "warmup_ratio": 0.0, "save_steps": 5, "logging_steps": 5}
    proc = run_training(config, wait=False)
    deadline = time.time() + 300
    while last_checkpoint(out) is None or int(last_checkpoint(out).name.split("-")[1]) < 10:
        assert proc.poll() is None and time.time() < deadline, "the run ended before writing two checkpoints"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    stopped_at = int(last_checkpoint(out).name.split("-")[1])
    assert 10 <= stopped_at < 150 and not (out / "config.json").exists()  # killed midway, no model yet

    run_training({**config, "resume": True})
    manifest = read_manifest(out)
    assert manifest["train_steps"] == 150 and manifest["resumed_from"].startswith("checkpoint-")
    assert int(manifest["resumed_from"].split("-")[1]) >= stopped_at
    assert not list(out.glob("checkpoint-*"))  # the optimizer state is gone once the model is saved
    assert (out / "config.json").is_file()


def test_without_checkpoints_nothing_is_written_besides_the_model(tmp_path):
    out = tmp_path / "student"
    run_training({"base_model": str(tiny_model(tmp_path / "base")), "output_dir": str(out), "max_steps": 3,
                  "warmup_ratio": 0.0})
    assert last_checkpoint(out) is None and read_manifest(out)["resumed_from"] is None


def test_resume_without_a_checkpoint_is_a_one_line_error(tmp_path):
    from tests.tiny_agents import run_cli

    result = run_cli("--db", str(tmp_path / "t.db"), "student", "train", "--dataset", "x",
                     "--out", str(tmp_path / "student"), "--resume")
    assert result.returncode == 1 and "--resume: no checkpoint in" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
