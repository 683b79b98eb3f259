"""``supertiny report --out DIR``: what the store knows, as one Markdown file with plots.

DIR/report.md holds, read from the store only:

- one section per evaluation run (the latest ``runs``): a table of every model and slice with
  its size (params, MB on disk), exact match, median latency, tokens and calls per request, and
  intent accuracy / slot F1 / sentence accuracy for an intent/slot domain; and for a run of two
  models or more, two plots with one labelled point per model: exact match vs size on disk, and
  exact match vs median latency per request (PNG files beside the Markdown);
- every registered model with its lineage: parent chain, the dataset version it was trained
  on, and the jobs and teacher models that dataset's traces came from;
- the data behind them: tasks per domain and split, traces per model and status, jobs with
  tokens and cost, dataset versions.

Plots are drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``):
no pyplot, no display, no global state.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import select

from dataengine.lineage import model_lineage
from dataengine.schema import DatasetItemRow, EvaluationRow, ModelRow, PredictionRow, TaskRow, TraceRow
from dataengine.store import Store
from supertiny.output import markdown_table

MB = 1e6


def write_report(store: Store, out: str | Path, runs: int = 10) -> dict[str, Any]:
    """Write ``out/report.md`` and its PNG plots; returns ``{"report", "plots", "runs"}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = {m.id: m for m in store.models()}
    evaluation_runs = latest_runs(store, runs)
    where = store.path if store.path else store.url.render_as_string(hide_password=True)
    lines = ["# supertiny report", "",
             f"Database `{where}` · written {datetime.now(timezone.utc).isoformat(timespec='seconds')}", ""]
    plots: list[Path] = []

    lines += ["## Evaluations", ""]
    if not evaluation_runs:
        lines += ["No evaluation runs yet: `supertiny eval` (or `supertiny demo`) writes them.", ""]
    for run_id, rows in evaluation_runs:
        domain = run_domain(store, run_id)
        lines += [f"### Run `{run_id}` · {domain or '?'}/{rows[0].split} · {rows[0].created_at}", ""]
        records, right = run_table(rows, models)
        lines.append(markdown_table(records, right=right))
        points = run_points(rows, models)
        if len(points) >= 2:
            size_png, latency_png = out / f"run-{run_id}-size.png", out / f"run-{run_id}-latency.png"
            title = f"{domain or ''} {rows[0].split}, run {run_id}".strip()
            if plot_accuracy(points, "size", size_png, title):
                plots.append(size_png)
                lines.append(f"![{points[0]['metric']} vs size, run {run_id}]({size_png.name})")
            plot_accuracy(points, "latency", latency_png, title)
            plots.append(latency_png)
            lines += [f"![{points[0]['metric']} vs latency, run {run_id}]({latency_png.name})", ""]

    lines += ["## Models and lineage", ""]
    if not models:
        lines += ["No registered models yet.", ""]
    for model in models.values():
        lines += lineage_lines(model_lineage(store, str(model.id)))
    lines.append("")

    lines += data_section(store)
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"report": report, "plots": plots, "runs": [run_id for run_id, _ in evaluation_runs]}


# ---- reading the store ------------------------------------------------------------------------


def latest_runs(store: Store, runs: int) -> list[tuple[str, list[EvaluationRow]]]:
    """The ``runs`` latest evaluation runs, newest first, each with its rows in stored order."""
    with store.session() as session:
        rows = list(session.exec(select(EvaluationRow).order_by(EvaluationRow.id)))
    by_run: dict[str, list[EvaluationRow]] = defaultdict(list)
    for row in rows:
        by_run[row.run_id].append(row)
    newest_first = sorted(by_run.items(), key=lambda item: item[1][-1].id, reverse=True)
    return newest_first[:runs]


def run_domain(store: Store, run_id: str) -> str | None:
    """An evaluation run's domain (the evaluations table has none: its predictions' tasks do)."""
    query = (select(TaskRow.domain).join(PredictionRow, PredictionRow.task_id == TaskRow.id)
             .where(PredictionRow.evaluation_run == run_id).limit(1))
    with store.session() as session:
        return session.exec(query).first()


# ---- one evaluation run: table and plots ---------------------------------------------------------


def run_table(rows: list[EvaluationRow], models: dict[int, ModelRow]) -> tuple[list[dict[str, str]], list[str]]:
    """Records and right-aligned columns for a run's Markdown table."""
    slots = any(r.slot_f1 is not None for r in rows)
    records = []
    for r in rows:
        model = models.get(r.model_id) if r.model_id is not None else None
        record = {"model": r.model_label, "slice": r.slice, "n": str(r.n),
                  "params": f"{model.params:,}" if model and model.params else "",
                  "MB": f"{model.bytes / MB:.1f}" if model and model.bytes else "",
                  "exact match": f"{r.exact_match:.1%}", "p50 ms": f"{r.latency_ms_median:.1f}",
                  "tokens/request": f"{r.tokens_per_request:.0f}", "calls/request": f"{r.calls_per_request:.2f}"}
        if slots:
            record |= {"intent acc": _share(r.intent_accuracy), "slot F1": _share(r.slot_f1),
                       "sentence acc": _share(r.sentence_accuracy)}
        records.append(record)
    right = [column for column in records[0] if column not in ("model", "slice")]
    return records, right


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def run_points(rows: list[EvaluationRow], models: dict[int, ModelRow]) -> list[dict[str, Any]]:
    """One point per model of a run (its ``all`` slice): label, accuracy, MB on disk (None when the
    model has no registered size: a teacher behind an endpoint), median latency. The accuracy is
    sentence accuracy when every model of the run has one (intent/slot domains: the number their
    literature compares), else exact match; ``metric`` names it."""
    rows = [r for r in rows if r.slice == "all"]
    sentence = bool(rows) and all(r.sentence_accuracy is not None for r in rows)
    points = []
    for r in rows:
        model = models.get(r.model_id) if r.model_id is not None else None
        points.append({"label": r.model_label, "metric": "sentence accuracy" if sentence else "exact match",
                       "accuracy": r.sentence_accuracy if sentence else r.exact_match, "latency_ms": r.latency_ms_median,
                       "mb": model.bytes / MB if model and model.bytes else None,
                       "params": model.params if model else None})
    return points


def plot_accuracy(points: list[dict[str, Any]], x: str, path: Path, title: str) -> bool:
    """Accuracy (the points' ``metric``) against ``x`` ("size": MB on disk, or "latency": p50 ms per request), one labelled
    point per model, saved as a PNG. Models without a size (the teacher) are a dashed line across
    the size plot. False, and nothing written, when no point has a size."""
    # imported here: the CLI should not pay for matplotlib elsewhere. The Agg canvas renders
    # without a display, and measures the labels so that they can be kept apart.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    key = "mb" if x == "size" else "latency_ms"
    placed = [p for p in points if p[key] is not None]
    if not placed:
        return False
    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    canvas = FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)  # fixed: labels are placed by pixel
    ax = figure.add_subplot()
    xs = [p[key] for p in placed]
    # sizes and latencies can span orders of magnitude (an endpoint vs a local model): log scale then
    log = max(xs) / max(min(xs), 1e-9) > 20
    if log:
        ax.set_xscale("log")
    # room on the right for the labels; a linear axis starts at 0 so that sizes compare as ratios
    ax.set_xlim(*((min(xs) / 1.6, max(xs) * 2.5) if log else (0, max(xs) * 1.35)))
    ax.set_ylim(0, 105)
    ax.set_xlabel(("size on disk (MB" if x == "size" else "median latency per request (ms")
                  + (", log scale)" if log else ")"))
    metric = points[0]["metric"]
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} vs {'size' if x == 'size' else 'latency'} · {title}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    line_labels = []  # the reference lines' own labels: the points' labels keep clear of them too
    for p in points:
        if p[key] is None:  # no size: its accuracy as a reference line
            ax.axhline(100 * p["accuracy"], color="tab:gray", linestyle="--", linewidth=1)
            line_labels.append(ax.annotate(f"{p['label']} (size not measured)", (0.01, 100 * p["accuracy"]),
                                           xycoords=("axes fraction", "data"), xytext=(0, 4),
                                           textcoords="offset points", fontsize=8, color="tab:gray"))
    ax.scatter(xs, [100 * p["accuracy"] for p in placed], s=60, color="tab:blue", zorder=3, clip_on=False)
    labels = [(f"{p['label']} ({p['mb']:,.0f} MB)" if x == "size" else f"{p['label']} ({p['latency_ms']:,.0f} ms)",
               (p[key], 100 * p["accuracy"])) for p in placed]
    renderer = canvas.get_renderer()
    _place_labels(ax, renderer, labels, [label.get_window_extent(renderer) for label in line_labels])
    figure.savefig(path)
    return True


def _place_labels(ax: Any, renderer: Any, labels: list[tuple[str, tuple[float, float]]],
                  taken_boxes: list[Any] = ()) -> None:
    """Each label beside its point, on the first side (right above, right below, left above, left
    below; then the same a line and two lines further out, with a leader line) where it overlaps
    no other label, point or ``taken_boxes`` (display coordinates) and stays inside the axes."""
    from matplotlib.transforms import Bbox

    points = [ax.transData.transform(at) for _, at in labels]
    taken = [Bbox.from_extents(px - 6, py - 6, px + 6, py + 6) for px, py in points] + list(taken_boxes)
    sides = [((dx, dy), "left" if dx > 0 else "right") for up, down in ((5, -14), (18, -27), (31, -40))
             for dx in (7, -7) for dy in (up, down)]
    for text, at in labels:
        for number, (offset, align) in enumerate(sides):
            label = ax.annotate(text, at, xytext=offset, textcoords="offset points", fontsize=9, ha=align)
            box = label.get_window_extent(renderer)
            inside = ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1
            if (inside and not any(box.overlaps(other) for other in taken)) or number == len(sides) - 1:
                taken.append(box)
                if abs(offset[1]) > 14:  # away from its point: a thin line shows whose label it is
                    label.remove()
                    ax.annotate(text, at, xytext=offset, textcoords="offset points", fontsize=9, ha=align,
                                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"})
                break
            label.remove()


# ---- lineage and data -------------------------------------------------------------------------


def lineage_lines(node: dict[str, Any]) -> list[str]:
    """A model's lineage as a Markdown list item: its parent chain, then its training data."""
    chain, dataset, current = [], None, node
    while current is not None:
        model = current["model"]
        if model.get("missing"):
            chain.append(f"model {model['id']} (no longer registered)")
            break
        params = f", {model['params']:,} params" if model.get("params") else ""
        chain.append(f"{model['id']} `{model['name']}` ({model['kind']}{params})")
        dataset = dataset or current.get("dataset")
        current = current.get("parent")
    lines = [f"- {' ← '.join(chain)}"]
    if dataset and not dataset.get("missing"):
        method = (dataset.get("spec") or {}).get("method", "")
        sources = "; ".join(
            (f"job {s['job']['id']} ({s['job']['kind']}, teacher `{s['teacher']}`, "
             f"{s['job']['samples']} sample{'' if s['job']['samples'] == 1 else 's'} per task)"
             if s["job"] else f"no job (teacher `{s['teacher']}`)") + f": {s['traces']} traces"
            for s in dataset["sources"])
        lines.append(f"  - trained on `{dataset['ref']}` ({dataset['domain']}, {dataset['items']} items, "
                     f"{method}) ← {sources or 'no traces'}")
    return lines


def data_section(store: Store) -> list[str]:
    """Tasks, traces, jobs (tokens and cost) and dataset versions, as Markdown tables."""
    with store.session() as session:
        tasks = session.exec(select(TaskRow.domain, TaskRow.split, func.count()).group_by(TaskRow.domain, TaskRow.split)
                             .order_by(TaskRow.domain, TaskRow.split)).all()
        traces = session.exec(select(TraceRow.model, TraceRow.status, func.count(),
                                     func.sum(TraceRow.prompt_tokens + TraceRow.completion_tokens))
                              .group_by(TraceRow.model, TraceRow.status).order_by(TraceRow.model, TraceRow.status)).all()
        items = dict(session.exec(select(DatasetItemRow.dataset_id, func.count()).group_by(DatasetItemRow.dataset_id)).all())
        # counted, not read from the job's counters: import and gold jobs do not keep counters
        per_job = dict(session.exec(select(TraceRow.job_id, func.count()).where(TraceRow.job_id.is_not(None))
                                    .group_by(TraceRow.job_id)).all())
    lines = ["## Data", "", "### Tasks", ""]
    lines.append(markdown_table([{"domain": d, "split": s, "tasks": str(n)} for d, s, n in tasks], right=["tasks"])
                 if tasks else "No tasks.\n")
    lines += ["### Traces", ""]
    lines.append(markdown_table([{"model": m, "status": s, "traces": str(n), "tokens": f"{t or 0:,}"}
                                 for m, s, n, t in traces], right=["traces", "tokens"]) if traces else "No traces.\n")
    jobs = store.jobs()
    lines += ["### Jobs", ""]
    if jobs:
        lines.append(markdown_table(
            [{"job": str(j.id), "kind": j.kind, "model": j.model, "domain/split": f"{j.domain}/{j.split}",
              "status": j.status, "traces": str(per_job.get(j.id, 0)), "attempts": str(j.attempts),
              "tokens": f"{j.prompt_tokens + j.completion_tokens:,}",
              "cost USD": "" if j.cost_usd is None else f"{j.cost_usd:.4f}"} for j in jobs],
            right=["traces", "attempts", "tokens", "cost USD"]))
        priced = [j.cost_usd for j in jobs if j.cost_usd is not None]
        lines.append(f"Total cost: {sum(priced):.4f} USD over {len(priced)} priced jobs "
                     f"({len(jobs) - len(priced)} without a price).\n" if priced else
                     "No job has a price (offline planner, gold labels or an unpriced model).\n")
    else:
        lines.append("No jobs.\n")
    datasets = store.datasets()
    lines += ["### Datasets", ""]
    lines.append(markdown_table([{"dataset": f"{d.name}@{d.version}", "domain": d.domain,
                                  "items": str(items.get(d.id, 0)), "method": str((d.spec or {}).get("method", "")),
                                  "created": d.created_at} for d in datasets], right=["items"])
                 if datasets else "No datasets.\n")
    return lines
