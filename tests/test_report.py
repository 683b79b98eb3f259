"""`supertiny report`: a store with models, lineage and two evaluation runs (one of them with
intent/slot metrics) -> report.md with their tables and lineage, and PNG plots that are PNGs."""
import json
import os
import subprocess
import sys

from PIL import Image

from dataengine.gold import gold_dataset
from dataengine.schema import EvaluationRow, PredictionRow
from dataengine.store import Store
from tools.snips.tasks import load_tasks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report(db, out):
    env = {**os.environ, "SUPERTINY_DB": str(db)}
    proc = subprocess.run([sys.executable, "-m", "supertiny.cli", "report", "--out", str(out), "--json"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)[0]


def evaluation(run_id, label, model_id, exact, latency, task_ids, split="dev", **slots):
    row = EvaluationRow(run_id=run_id, model_label=label, model_spec=label, model_id=model_id, split=split,
                        slice="all", n=len(task_ids), exact_match=exact, name_accuracy=exact, arg_f1=exact,
                        latency_ms_median=latency, tokens_per_request=50.0, calls_per_request=1.0, **slots)
    predictions = [PredictionRow(evaluation_run=run_id, model_label=label, task_id=t, prediction=None, exact=0,
                                 latency_ms=latency, tokens=50, model_calls=1) for t in task_ids]
    return [row], predictions


def utterance(*pieces):
    return {"data": [{"text": p} if isinstance(p, str) else {"text": p[1], "entity": p[0]} for p in pieces]}


def build_store(tmp_path):
    data = tmp_path / "snips"
    data.mkdir()
    (data / "train_PlayMusic.json").write_text(json.dumps({"PlayMusic": [
        utterance("play ", ("artist", "Adele")), utterance("play some ", ("genre", "jazz"))]}))
    (data / "dev_PlayMusic.json").write_text(json.dumps({"PlayMusic": [
        utterance("play ", ("artist", "Björk")), utterance("put on ", ("genre", "blues"))]}))
    store = Store(tmp_path / "report.db")
    store.add_tasks(load_tasks(data))
    dataset, _ = gold_dataset(store, name="snips-gold", domain="snips")
    base = store.add_model(name="smollm2-135m", kind="base", path="/models/base", config={}, params=134_515_008,
                           bytes=541_615_115)
    student = store.add_model(name="student-snips-gold@1", kind="student", path="/models/student", config={},
                              parent_id=base.id, dataset_id=dataset.id, params=134_515_008, bytes=541_616_675)
    pruned = store.add_model(name="student-pruned", kind="pruned", path="/models/pruned", config={},
                             parent_id=student.id, dataset_id=dataset.id, params=113_274_432, bytes=456_646_823)
    int8 = store.add_model(name="student-pruned-int8", kind="quantized", path="/models/int8", config={},
                           parent_id=pruned.id, dataset_id=dataset.id, params=113_274_432, bytes=267_572_039)
    dev = [t.id for t in store.tasks(domain="snips", split="dev")]
    for rows, predictions in (
            evaluation("run1teacher", "teacher", None, 0.9, 5.0, dev),  # a run of one model: no plots
            evaluation("run2models", "teacher", None, 0.833, 812.0, dev),
            evaluation("run2models", "base", base.id, 0.0, 117.0, dev),
            evaluation("run2models", "student", student.id, 0.5, 1292.5, dev, intent_accuracy=0.95, slot_f1=0.875,
                       sentence_accuracy=0.5),
            evaluation("run2models", "pruned", pruned.id, 0.45, 1100.0, dev),
            evaluation("run2models", "compressed", int8.id, 0.466, 713.8, dev)):
        store.add_evaluation(rows, predictions)
    return store


def test_report_has_a_table_per_run_lineage_data_and_real_png_plots(tmp_path):
    build_store(tmp_path)
    out = tmp_path / "report"
    written = report(tmp_path / "report.db", out)
    assert written["runs"] == ["run2models", "run1teacher"]  # newest first
    text = (out / "report.md").read_text()
    assert "### Run `run2models` · snips/dev" in text and "### Run `run1teacher` · snips/dev" in text
    assert "| model | slice | n | params | MB | exact match | p50 ms | tokens/request | calls/request | intent acc " \
           "| slot F1 | sentence acc |" in text
    assert "| student | all | 2 | 134,515,008 | 541.6 | 50.0% | 1292.5 | 50 | 1.00 | 95.0% | 87.5% | 50.0% |" in text
    assert "| compressed | all | 2 | 113,274,432 | 267.6 | 46.6% | 713.8 | 50 | 1.00 |" in text
    assert "| teacher | all | 2 |  |  | 83.3% | 812.0 |" in text
    # lineage: the int8 model's whole chain, and the data it was trained on
    assert ("`student-pruned-int8` (quantized, 113,274,432 params) ← 3 `student-pruned` (pruned, 113,274,432 params)"
            " ← 2 `student-snips-gold@1` (student, 134,515,008 params) ← 1 `smollm2-135m` (base, 134,515,008 params)"
            ) in text
    assert ("trained on `snips-gold@1` (snips, 2 items, gold) ← job 1 (gold, teacher `gold`, 1 sample per task): "
            "2 traces") in text
    assert "| snips | dev | 2 |" in text and "| gold | ok | 2 |" in text
    assert "| 1 | gold | gold | snips/train | done | 2 |" in text  # the job's traces, counted

    plots = sorted(out.glob("*.png"))
    assert [p.name for p in plots] == ["run-run2models-latency.png", "run-run2models-size.png"]
    assert sorted(written["plots"]) == sorted(str(p) for p in plots)
    for plot in plots:
        assert f"]({plot.name})" in text  # embedded in the Markdown
        data = plot.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
        with Image.open(plot) as image:
            image.verify()
        with Image.open(plot) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400
            # drawn on, not blank: the points and labels make many distinct colours
            assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 50


def test_an_empty_store_gets_a_report_that_says_so(tmp_path):
    written = report(tmp_path / "empty.db", tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert written["runs"] == [] and written["plots"] == []
    assert "No evaluation runs yet" in text and "No registered models yet" in text and "No tasks." in text


def test_labels_of_points_close_together_do_not_overlap():
    """Three models a few percent apart (a student, its pruned and its quantized copy) on a log
    latency axis: every label finds a free place beside its point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from supertiny.report import _place_labels

    figure = Figure(figsize=(6.4, 4.2), dpi=120)  # as plot_accuracy draws it
    canvas = FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)
    ax = figure.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(3.6 / 1.6, 2150 * 2.5)
    ax.set_ylim(0, 105)
    points = [("teacher (4 ms)", (3.6, 90.0)), ("student (2,150 ms)", (2150, 75.0)),
              ("depth-pruned-healed (1,535 ms)", (1535, 72.5)), ("depth-pruned-healed-int8 (616 ms)", (616, 71.7))]
    ax.scatter([x for _, (x, _) in points], [y for _, (_, y) in points])
    _place_labels(ax, canvas.get_renderer(), points)
    renderer = canvas.get_renderer()
    boxes = []
    for text in list(ax.texts):  # the text alone: a label away from its point also draws a leader line
        probe = ax.annotate(text.get_text(), text.xy, xytext=text.xyann, textcoords="offset points", fontsize=9,
                            ha=text.get_ha())
        boxes.append(probe.get_window_extent(renderer))
        probe.remove()
    assert len(boxes) == len(points)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(ax.bbox.x0 <= b.x0 and b.x1 <= ax.bbox.x1 for b in boxes)


def test_a_label_keeps_clear_of_the_reference_lines_label():
    """The teacher's dashed line (no size) is labelled at the left; a small model at the
    teacher's accuracy (an int8 student of 139 MB, as measured) used to write over it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from supertiny.report import _place_labels

    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    canvas = FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)
    ax = figure.add_subplot()
    ax.set_xlim(0, 542 * 1.35)
    ax.set_ylim(0, 105)
    line_label = ax.annotate("teacher (size not measured)", (0.01, 90.0), xycoords=("axes fraction", "data"),
                             xytext=(0, 4), textcoords="offset points", fontsize=8)
    renderer = canvas.get_renderer()
    reference = line_label.get_window_extent(renderer)
    points = [("onnx-int8 (139 MB)", (139.0, 90.0)), ("student (542 MB)", (541.6, 89.2))]
    _place_labels(ax, renderer, points, [reference])
    placed = [text for text in ax.texts if text is not line_label]
    assert len(placed) == 2
    assert not any(text.get_window_extent(renderer).overlaps(reference) for text in placed)


def test_intent_slot_runs_plot_sentence_accuracy_and_others_exact_match():
    from supertiny.report import run_points

    def row(label, exact, sentence=None):
        return EvaluationRow(run_id="r", model_label=label, model_spec=label, split="dev", slice="all", n=10,
                             exact_match=exact, name_accuracy=exact, arg_f1=exact, latency_ms_median=1.0,
                             tokens_per_request=1.0, calls_per_request=1.0, sentence_accuracy=sentence)

    points = run_points([row("student", 0.87, 0.866), row("int8", 0.85, 0.849)], {})
    assert [(p["metric"], p["accuracy"]) for p in points] == [("sentence accuracy", 0.866), ("sentence accuracy", 0.849)]
    points = run_points([row("teacher", 0.9), row("student", 0.87, 0.866)], {})  # not every model has one
    assert [(p["metric"], p["accuracy"]) for p in points] == [("exact match", 0.9), ("exact match", 0.87)]
