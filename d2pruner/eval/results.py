"""Read lmms-eval's output folders into runs, and runs into method × keep-ratio tables.

lmms-eval 0.7.3 writes ``<output_path>/<model name>/<YYYYmmdd_HHMMSS>_results.json``: ``results`` maps each task
to ``"<metric>,<filter>"`` values, ``config.model_args`` is the ``--model_args`` string, ``n-samples`` the
document counts. Each (results file, task) is one :class:`Run`; :func:`tables` groups the runs of one model on
one task into a :class:`Table` (rows: the unpruned baseline, then one row per method and setting; columns:
keep ratios, then keep counts). Plain JSON reading: lmms-eval need not be installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: model args that decide a run's row (besides the method); the budget decides its column
ROW_ARGS = ("layer", "preset", "prior", "alpha", "theta", "r_pivot", "num_pivots", "lam", "importance",
            "max_new_tokens", "dtype")
#: model args that never distinguish results
_IGNORED_ARGS = ("pretrained", "method", "keep_ratio", "keep", "batch_size", "device")
UNPRUNED = "none"
#: row order: the unpruned baseline, the baselines as in the paper's Table 3, D²Pruner's ablations, D²Pruner
METHOD_ORDER = (UNPRUNED, "fastv", "dart", "divprune", "mmr", "d2pruner-di", "d2pruner-nospatial", "d2pruner")


@dataclass(frozen=True)
class Run:
    """One task's results in one lmms-eval results file.

    Attributes:
        path: the results file; ``date``: its timestamp (file-name prefix).
        model: ``pretrained``; ``task``: the task name; ``method``: ``"none"`` for the unpruned model.
        keep_ratio / keep: the budget (None for the unpruned model).
        settings: the other model args that change results (:data:`ROW_ARGS`), as strings.
        metrics: metric name → value (the ``none`` filter; other filters as ``name,filter``).
        samples: documents evaluated (lmms-eval's ``n-samples.effective``), or None.
    """

    path: Path
    date: str
    model: str
    task: str
    method: str
    keep_ratio: float | None
    keep: int | None
    settings: tuple[tuple[str, str], ...]
    metrics: dict = field(hash=False, compare=False)
    samples: int | None = None


def parse_model_args(text: str) -> dict[str, str]:
    """``"a=1,b=x"`` → ``{"a": "1", "b": "x"}`` (the plain form lmms-eval's ``--model_args`` take)."""
    args: dict[str, str] = {}
    for piece in (text or "").split(","):
        if "=" in piece:
            key, value = piece.split("=", 1)
            args[key.strip()] = value.strip()
    return args


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``*_results.json`` under the given folders (or the files themselves), sorted."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(path.rglob("*_results.json"))
        else:
            raise ValueError(f"no such file or folder: {path}")
    return sorted(found)


def _metrics(task_results: dict) -> dict:
    metrics = {}
    for key, value in task_results.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        name, flt = key.split(",", 1)
        metrics[name if flt == "none" else key] = float(value)
    return metrics


def read_runs(path: Path) -> list[Run]:
    """The runs of one results file (one per task); a file that is not lmms-eval's results → ValueError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        results, config = data["results"], data["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not an lmms-eval results file ({err})") from err
    args = parse_model_args(config.get("model_args") or "")
    method = args.get("method", UNPRUNED)
    method = UNPRUNED if method.lower() == UNPRUNED else method
    keep_ratio, keep = _number(args.get("keep_ratio")), _number(args.get("keep"))
    settings = tuple(sorted((k, v) for k, v in args.items() if k not in _IGNORED_ARGS))
    date = Path(path).name.split("_results.json")[0]
    samples = data.get("n-samples", {})
    return [
        Run(
            path=Path(path),
            date=date,
            model=args.get("pretrained", config.get("model", "?")),
            task=task,
            method=method,
            keep_ratio=keep_ratio,
            keep=None if keep is None else int(keep),
            settings=settings,
            metrics=_metrics(task_results),
            samples=(samples.get(task) or {}).get("effective"),
        )
        for task, task_results in sorted(results.items())
    ]


@dataclass
class Table:
    """One model on one task: ``cells[(row, column)]`` = the run; rows and columns in display order.

    Attributes:
        model, task: what the table is about.
        rows: row labels in :data:`METHOD_ORDER` (unknown methods after, alphabetically).
        columns: ``("unpruned", None)`` then ``("ratio", r)`` descending, then ``("keep", n)`` descending.
        cells: (row label, column) → :class:`Run`.
        common: settings shared by every run (shown once, not in row labels).
        notes: e.g. results files superseded by a later run of the same cell.
    """

    model: str
    task: str
    rows: list[str]
    columns: list[tuple[str, float | int | None]]
    cells: dict[tuple[str, tuple], Run]
    common: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def value(self, row: str, column: tuple, metric: str) -> float | None:
        run = self.cells.get((row, column))
        return None if run is None else run.metrics.get(metric)


def _column(run: Run) -> tuple[str, float | int | None]:
    if run.method == UNPRUNED:
        return ("unpruned", None)
    if run.keep_ratio is not None:
        return ("ratio", run.keep_ratio)
    return ("keep", run.keep)


def _column_order(column: tuple) -> tuple:
    kind, value = column
    return ({"unpruned": 0, "ratio": 1, "keep": 2}[kind], -(value or 0))


def _label(run: Run, varying: Sequence[str]) -> str:
    shown = [f"{k}={v}" for k, v in run.settings if k in varying]
    name = "unpruned" if run.method == UNPRUNED else run.method
    return f"{name} ({', '.join(shown)})" if shown else name


def _run_order(run: Run) -> tuple:
    known = run.method in METHOD_ORDER
    return (METHOD_ORDER.index(run.method) if known else len(METHOD_ORDER), run.method, run.settings, run.date,
            str(run.path))


def _table(model: str, task: str, runs: list[Run]) -> Table:
    keys = sorted({k for run in runs for k, _ in run.settings})
    values = {k: {dict(run.settings).get(k) for run in runs} for k in keys}
    varying = [k for k in keys if len(values[k]) > 1]
    common = {k: next(iter(v)) for k, v in values.items() if len(v) == 1 and None not in v}
    cells: dict[tuple[str, tuple], Run] = {}
    rows: list[str] = []
    notes: list[str] = []
    for run in sorted(runs, key=_run_order):
        label = _label(run, varying)
        if label not in rows:
            rows.append(label)
        key = (label, _column(run))
        if key in cells:
            notes.append(f"{cells[key].path} superseded by the later {run.path}")
        cells[key] = run
    columns = sorted({column for _, column in cells}, key=_column_order)
    return Table(model, task, rows, columns, cells, common, notes)


def tables(runs: Iterable[Run]) -> list[Table]:
    """Group runs by (model, task) into tables, sorted by model then task."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.model, run.task), []).append(run)
    return [_table(model, task, group) for (model, task), group in sorted(groups.items())]
