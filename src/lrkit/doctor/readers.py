"""Readers: the training logs people have -> :class:`~lrkit.curve.Curve` s (steps, loss, lr, eval loss, grad norm).

Formats are detected from the content, not the name:

- CSV/TSV with a header, streamed (Lightning ``metrics.csv`` sparse rows grouped by step; a step counter that
  restarts every epoch made cumulative with the ``epoch`` column; a W&B-style export with one column per run read
  as several runs);
- JSON lines (a config or header record is set aside and its lr kept), a JSON document anywhere inside which sits a
  list of records (``{"metrics": [{"step": .., "train loss": ..}, ...]}``) or per-epoch lists (Keras
  ``history.history``, ``{"train_losses": [...], "test_losses": [...]}``), Hugging Face ``trainer_state.json``;
- text logs of the ``key value`` family that trainers print (:mod:`lrkit.doctor.textlog`);
- TensorBoard event files or folders (needs ``tensorboard``);
- MLflow run folders, experiment folders and ``mlruns`` roots (one run per run folder; the lr from ``params/``).

Each reader returns every numeric series as :class:`Columns`; :func:`read_runs` then picks the loss column (or
``metric``) of each run, aligns the lr, grad norm and eval loss to it, and records in ``Curve.meta`` what it read and
every note about how (notes reach the user through the diagnosis). A log that is half valid and half garbage reads its
valid part and says where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from lrkit.curve import Curve, unroll_running_mean
from lrkit.doctor import textlog
from lrkit.errors import LrkitError, missing_extra

STEP_KEYS = ("step", "global_step", "_step", "steps", "iteration", "iter", "it", "batch", "trainer/global_step",
             "num_updates", "train/global_step", "global_steps")
LOSS_NAMES = ("loss", "train_loss", "train/loss", "training_loss", "train_loss_step", "loss_step",
              "train/loss_step", "trainer/loss", "train/loss_iter", "batch_loss", "loss/train", "train_loss_iter",
              "trl", "lm_loss", "train/lm_loss", "train_losses", "training_losses", "epoch_loss", "train_loss_epoch",
              "loss_epoch", "train/epoch_loss", "losses", "train/crossentropyloss")
LR_NAMES = ("lr", "learning_rate", "learning-rate", "learning rate", "train/learning_rate", "train/lr", "lr/pg0",
            "optim/lr", "lr-0", "lr_0", "x/lr0", "optim/learning_rate_group0", "lr_group0", "lrs", "learning_rates",
            "training rate")
GRAD_NORM_NAMES = ("grad_norm", "gradient_norm", "train/grad_norm", "grad-norm", "gradnorm", "optim/grad_norm",
                   "grad_norm/total", "train/gradient_norm", "norm", "gnorm", "grad norm", "optim/total_grad_norm")
# metrics that are no descent signal: the lr cannot be judged from how they move
NOT_A_LOSS = re.compile(r"(reward|return|surrogate|policy[_ ]?(gradient[_ ]?)?loss|pg_loss|value[_ ]?loss|entropy|"
                        r"approx_kl|clip_?frac|advantage|episode|ep_rew|accuracy|(^|[^a-z])acc($|[^a-z])|bleu|"
                        r"rouge|f1|auc|map|precision|recall|score|ppo|actor|critic|q_loss|td_error)")
_LOSS_WORD = re.compile(r"loss")
_OTHER_LOSS = re.compile(r"(^|[^a-z])(nll|xent|cross_?entropy|crossentropyloss|ce|cost|mse|rmse)([^a-z]|$)")
_PPL = re.compile(r"(^|[^a-z])(ppl|perplexity)([^a-z]|$)")
_EVAL_WORDS = re.compile(r"(^|[^a-z])(val|valid|validation|eval|evaluation|test|dev|tel|vl)([^a-z]|$)")
_LR_TAG = re.compile(r"(?:^|[^a-z])(?:lr|learning[_-]?rate)[ _=:-]?((?:\d+(?:[._]\d+)?|\.\d+)(?:e[-_+]?\d+)?)(?![\d])")
CHUNK_ROWS = 1_000_000
JSON_DOC_MAX = 512 * 2**20  # larger JSON documents than this are read as JSON lines only


class Columns(dict):
    """Column name -> (steps, values) of one run; ``fmt`` names the format, ``notes`` what the reader did, ``run`` the
    run's name (several runs in one source), ``config`` scalar settings found beside the metrics (lr, scheduler)."""

    def __init__(self, fmt: str, run: str | None = None) -> None:
        super().__init__()
        self.fmt = fmt
        self.notes: list[str] = []
        self.semantics = ""
        self.window: int | None = None
        self.run = run
        self.config: dict[str, Any] = {}
        self.header: list[str] | None = None
        self.unit = "step"


# ----------------------------------------------------------------------------------------------------- detection
def read_log(path: str | os.PathLike, metric: str | None = None, running_mean: bool = False,
             run: str | None = None) -> Curve:
    """Read a training log (format detected from the content) into a Curve of the loss column or ``metric``.

    ``running_mean=True``: the loss is a running mean that restarts each epoch (Keras batch-level logs); the
    per-batch losses are recovered from it (needs an ``epoch`` column). A source that holds several runs (an MLflow
    experiment, a CSV with one column per run) needs ``run=NAME``; :func:`read_runs` reads them all. The Curve's
    ``meta`` says the format, the columns used, every column, the config found, and the reader's notes."""
    curves = read_runs(path, metric=metric, running_mean=running_mean)
    if run is not None:
        chosen = [c for c in curves if c.meta.get("run") == run]
        if not chosen:
            raise LrkitError(f"{os.fspath(path)}: no run {run!r}; runs: {', '.join(str(c.meta.get('run')) for c in curves)}")
        return chosen[0]
    if len(curves) > 1:
        raise LrkitError(f"{os.fspath(path)} holds {len(curves)} runs ({', '.join(str(c.meta.get('run')) for c in curves[:8])}"
                         f"{', ...' if len(curves) > 8 else ''}); pick one with run=NAME, or read them all with "
                         "lrkit.read_runs / compare them with lrkit.diagnose_runs (the CLI compares them)")
    return curves[0]


def read_runs(path: str | os.PathLike, metric: str | None = None, running_mean: bool = False) -> list[Curve]:
    """Every run in a log file or folder, each as the Curve of its loss column (or ``metric``)."""
    sources = read_sources(path)
    src = os.fspath(path)
    curves = []
    errors = []
    for cols in sources:
        try:
            c = columns_to_curve(cols, metric, source=src)
        except LrkitError as e:
            if len(sources) == 1:
                raise
            errors.append(str(e))
            continue
        if running_mean:
            epoch_name = next((n for n in cols if n.lower() == "epoch"), None)
            if epoch_name is None:
                raise LrkitError(f"{src}: running_mean needs an 'epoch' column to know where the mean restarts; "
                                 f"columns: {', '.join(cols)}")
            c.values = unroll_running_mean(c.values, _align(cols, epoch_name, c.steps))
            c.meta["semantics"] = ("the log held running means since the start of each epoch (Keras batch logs); "
                                   "per-batch losses were recovered from them")
        curves.append(c)
    if not curves:
        raise LrkitError(f"{src}: none of its {len(sources)} runs has a loss to read ({errors[0]})")
    if errors:
        curves[0].meta["notes"].append(f"{len(errors)} other run(s) had no loss to read: {errors[0]}")
    return curves


def read_columns(path: str | os.PathLike) -> Columns:
    """Every numeric series of a single-run log, by name (format detected from the content)."""
    sources = read_sources(path)
    if len(sources) > 1:
        raise LrkitError(f"{os.fspath(path)} holds {len(sources)} runs; read them with lrkit.read_runs")
    return sources[0]


def read_sources(path: str | os.PathLike) -> list[Columns]:
    """Every run of a log file or folder as :class:`Columns` (one, unless the source holds several runs)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LrkitError(f"{path}: no such file or folder; check the path")
    if os.path.isdir(path):
        return _read_dir(path)
    if os.path.getsize(path) == 0:
        raise LrkitError(f"{path}: the file is empty; point lrkit at a log that has rows")
    name = os.path.basename(path)
    if "tfevents" in name:
        return [read_tensorboard(path)]
    head = _head(path)
    text = head.lstrip("\ufeff \t\r\n")
    if name == "trainer_state.json" or (text.startswith("{") and '"log_history"' in head):
        return [read_trainer_state(path)]
    if text.startswith(("{", "[")):
        return read_json(path, head)
    if _looks_like_csv(head):
        return read_csv(path)
    return [read_text(path)]


def _head(path: str, n: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(n)
    except OSError as e:
        raise LrkitError(f"{path}: cannot read the file ({e.strerror}); check its permissions") from e
    sample = raw[:4096]
    # text with a few NUL bytes (a log cut by a crash or written by two processes) is still text; binary is not
    control = sum(1 for b in sample.replace(b"\x00", b"") if b < 9 or 13 < b < 32)
    if sample and (sample.count(b"\x00") > 0.3 * len(sample) or control > 0.1 * len(sample)):
        raise LrkitError(f"{path}: this is a binary file lrkit cannot read as a log; give a CSV, JSON, a text log, "
                         "trainer_state.json, a TensorBoard event file, or an MLflow run folder")
    return raw.replace(b"\x00", b"").decode("utf-8", errors="replace")


def _looks_like_csv(head: str) -> bool:
    """A header of names followed by rows with as many fields, mostly numbers or empty (not a text log)."""
    lines = [ln for ln in head.splitlines()[:40] if ln.strip()]
    if not lines:
        return False
    delim = _delimiter(lines[0])
    if delim is None:  # one column: a name, then numbers
        name = lines[0].strip()
        return bool(re.fullmatch(r"[A-Za-z_][\w./-]*", name)) and len(lines) > 1 and all(
            _is_number(ln.strip()) or ln.strip().lower() in _NONFINITE for ln in lines[1:21])
    width = len(next(csv.reader([lines[0]], delimiter=delim)))
    if width < 2:
        return False
    rows = lines[1:21]
    if not rows:
        return True  # a header alone: the CSV reader says it has no rows
    same = [r for r in rows if len(next(csv.reader([r], delimiter=delim))) == width]
    if len(same) < 0.8 * len(rows):
        return False
    cells = [c.strip() for r in same for c in next(csv.reader([r], delimiter=delim))]
    numeric = sum(1 for c in cells if not c or _is_number(c))
    return numeric >= 0.5 * len(cells)


def _delimiter(line: str) -> str | None:
    counts = {d: line.count(d) for d in ("\t", ",", ";")}
    d = max(counts, key=counts.__getitem__)
    return d if counts[d] else None


def _read_dir(path: str) -> list[Columns]:
    entries = sorted(os.listdir(path))
    if "metrics" in entries and os.path.isdir(os.path.join(path, "metrics")):
        return [read_mlflow(path)]
    if os.path.basename(os.path.normpath(path)) == "metrics" and entries and all(
            os.path.isfile(os.path.join(path, e)) for e in entries):
        return [read_mlflow(os.path.dirname(os.path.normpath(path)))]
    runs = _mlflow_runs(path)
    if runs:
        return [read_mlflow(r) for r in runs]
    if "trainer_state.json" in entries:
        return [read_trainer_state(os.path.join(path, "trainer_state.json"))]
    if "metrics.csv" in entries:
        return read_csv(os.path.join(path, "metrics.csv"))
    ckpts = sorted((e for e in entries if re.fullmatch(r"checkpoint-\d+", e)
                    and os.path.isfile(os.path.join(path, e, "trainer_state.json"))),
                   key=lambda e: int(e.split("-")[1]))
    if ckpts:  # a Trainer output_dir: the latest checkpoint's state holds the whole history
        return [read_trainer_state(os.path.join(path, ckpts[-1], "trainer_state.json"))]
    for _root, _, files in os.walk(path):
        if any("tfevents" in f for f in files):
            return [read_tensorboard(path)]
    for root, _, files in os.walk(path):
        for f in sorted(files):
            if f == "metrics.csv":
                return read_csv(os.path.join(root, f))
    raise LrkitError(f"{path}: a folder with no log lrkit knows (looked for TensorBoard event files, metrics.csv, "
                     "trainer_state.json, MLflow runs with a metrics/ folder); pass the log file itself")


# ----------------------------------------------------------------------------------------------------------- CSV
def read_csv(path: str) -> list[Columns]:
    """CSV/TSV with a header; streamed in chunks of a million rows; sparse rows (Lightning) grouped by step; a step
    that restarts every epoch made cumulative; a W&B-style export with one column per run read as several runs."""
    head = _head(path)
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    if not first.strip():
        raise LrkitError(f"{path}: no header line; a CSV log needs a header naming its columns")
    delim = _delimiter(first) or ","
    header = [h.strip() for h in next(csv.reader([first], delimiter=delim))]
    if len(header) < 1 or all(_is_number(h) for h in header):
        raise LrkitError(f"{path}: the first line is not a header of column names; add one (e.g. step,loss,lr)")
    notes: list[str] = []
    unit = "step"
    try:
        data = _csv_dense(path, header, delim)
        present = None
    except ValueError:
        data, present, stop = _csv_sparse(path, header, delim)
        if stop:
            notes.append(stop)
    if data.shape[0] == 0:
        raise LrkitError(f"{path}: the CSV has a header ({', '.join(header[:12])}) but no data rows")
    lower = [h.lower() for h in header]
    step_j = next((lower.index(k) for k in STEP_KEYS if k in lower), None)
    epoch_j = lower.index("epoch") if "epoch" in lower else None
    if step_j is not None:
        steps = data[:, step_j].copy()
        if epoch_j is not None:
            ok = np.isfinite(steps)
            ep = textlog.fill_forward(data[:, epoch_j].copy())
            fixed, restarted = textlog.restart_per_epoch(steps[ok], ep[ok])
            if restarted:
                steps[ok] = fixed
                notes.append(f"the {header[step_j]!r} column restarts every epoch: steps were made cumulative with "
                             f"the {header[epoch_j]!r} column")
    elif epoch_j is not None and np.isfinite(data[:, epoch_j]).all() and np.all(np.diff(data[:, epoch_j]) > 0):
        steps = data[:, epoch_j].copy()
        unit = "epoch"
        notes.append(f"no step column: the {header[epoch_j]!r} column is the step axis (one row per epoch)")
    else:
        steps = np.arange(data.shape[0], dtype=np.float64)
        unit = "row"
        notes.append("no step column: used the row number as the step")
    has_step = np.isfinite(steps)
    all_cols: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for j, h in enumerate(header):
        if j == step_j:
            continue
        keep = has_step if present is None else has_step & present[:, j]
        if keep.any():
            all_cols[h] = (steps[keep], data[keep, j])
    fmt = "lightning" if os.path.basename(path) == "metrics.csv" and "epoch" in lower else "csv"
    groups = _runs_by_column(list(all_cols))
    out = []
    for run, names in (groups.items() if groups else [(None, {h: h for h in all_cols})]):
        cols = Columns(fmt, run)
        cols.notes = list(notes)
        cols.header = header
        cols.unit = unit
        for short, full in names.items():
            cols[short] = all_cols[full]
        if groups:
            for h in all_cols:  # the shared columns (step-like, epoch) go to every run
                if not any(h in n.values() for n in groups.values()):
                    cols.setdefault(h, all_cols[h])
            tag = _lr_from_name(run)
            if tag is not None:
                cols.config["lr"], cols.config["lr_from"] = tag, f"the run's name {run!r}"
        out.append(cols)
    if groups:
        out[0].notes.append(f"{len(groups)} runs in one file (one column per run): read as separate runs")
    return out


def _runs_by_column(names: list[str]) -> dict[str, dict[str, str]]:
    """Columns of several runs in one table (W&B exports ``<run> - <metric>``, or one loss column per lr such as
    ``loss_lr0.01``): run -> {metric name within the run: column}; empty when the table is one run."""
    wandb: dict[str, dict[str, str]] = {}
    for n in names:
        if " - " in n:
            run, _, m = n.partition(" - ")
            if m.endswith(("__MIN", "__MAX", "__STEP")):
                continue
            wandb.setdefault(run.strip(), {})[m.strip()] = n
    if len(wandb) >= 2:
        return wandb
    tagged = {n: {"loss": n} for n in names if _LR_TAG.search(n.lower()) and
              (pick_loss_column([n]) or not _looks_like_setting(n))}
    return tagged if len(tagged) >= 2 else {}


def _looks_like_setting(name: str) -> bool:
    """A column that holds a setting rather than a run's metric (``lr_0`` is param group 0's lr)."""
    return bool(re.fullmatch(r"(x/)?lr[_-]?\d", name.strip().lower()))


def lr_tag(name: str) -> tuple[float, int, int] | None:
    """The lr written in a name (``lr_0.001``, ``lr1e-3``, ``UNet_lr1e_3``, ``learning_rate_0.01``) and where its
    number sits in the name (start, end), else None."""
    m = _LR_TAG.search(name.lower())
    if not m:
        return None
    v = _tag_value(m.group(1))
    return None if v is None else (v, m.start(1), m.end(1))


def _lr_from_name(name: str | None) -> float | None:
    """An lr written in a run's or file's name (its last path part), else None."""
    if not name:
        return None
    tag = lr_tag(os.path.basename(os.path.normpath(name)))
    return tag[0] if tag else None


def _tag_value(text: str) -> float | None:
    text = re.sub(r"e_(\d)", r"e-\1", text)  # 1e_3: an underscore for the minus sign
    if "e" not in text:
        text = text.replace("_", ".")
    try:
        v = float(text)
    except ValueError:
        return None
    return v if 0 < v < 100 else None


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _csv_dense(path: str, header: list[str], delim: str) -> np.ndarray:
    """Fast path: every field numeric (``nan`` allowed); numpy's C parser, a million rows at a time."""
    parts = []
    with open(path, encoding="utf-8", errors="replace") as f:
        line = f.readline()
        while line and not line.strip():
            line = f.readline()
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data" at the end of the file
                a = np.loadtxt(f, delimiter=delim, dtype=np.float64, max_rows=CHUNK_ROWS, ndmin=2, quotechar='"')
            if a.shape[0] == 0:
                break
            if a.shape[1] != len(header):
                raise ValueError("ragged")
            parts.append(a)
            if a.shape[0] < CHUNK_ROWS:
                break
    return np.concatenate(parts) if parts else np.empty((0, len(header)))


_NONFINITE = ("nan", "-nan", "inf", "-inf", "infinity", "-infinity", "+inf")


def _csv_sparse(path: str, header: list[str], delim: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Slow path: empty and text cells are missing, literal ``nan``/``inf`` are kept (a diverged loss). Rows after
    a stretch of 100 rows with no number at all (garbage appended to the file) are not read. Returns (data, present,
    a note on where reading stopped or '')."""
    width = len(header)
    values: list[float] = []
    flags: list[bool] = []
    stop = ""
    bad_run = 0
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader((ln.replace("\x00", "") for ln in f), delimiter=delim)
        next(reader, None)
        n_row = 0
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            vals = [math.nan] * width
            pres = [False] * width
            any_num = False
            for j, cell in enumerate(row[:width]):
                cell = cell.strip()
                if not cell:
                    continue
                try:
                    vals[j] = float(cell)
                    pres[j] = True
                    any_num = True
                except ValueError:
                    if cell.lower() in _NONFINITE:
                        vals[j], pres[j], any_num = float(cell.lower().replace("-nan", "nan")), True, True
            if not any_num or len(row) > width + 2:
                bad_run += 1
                if bad_run == 100:
                    stop = (f"no numeric rows from line {lineno - 99} on: read the {n_row} rows before it "
                            "(the rest of the file is not this CSV)")
                    break
                continue
            bad_run = 0
            values.extend(vals)
            flags.extend(pres)
            n_row += 1
    data = np.asarray(values, dtype=np.float64).reshape(-1, width)
    present = np.asarray(flags, dtype=bool).reshape(-1, width)
    return data, present, stop


# ------------------------------------------------------------------------------------------------ JSON (any kind)
def read_json(path: str, head: str) -> list[Columns]:
    """JSON lines (a whole object on each line), a JSON document (a list of records, or records / per-epoch lists
    anywhere inside an object), or lines that are Python dicts (the Hugging Face Trainer's printout: the text reader).
    JSON lines are streamed; a document is read whole (up to :data:`JSON_DOC_MAX` bytes)."""
    lines = [ln.strip() for ln in head.lstrip("\ufeff").splitlines() if ln.strip()]
    first = lines[0] if lines else ""

    def whole(line: str) -> bool:
        try:
            json.loads(line)
            return True
        except ValueError:
            return False

    if first.startswith("{") and whole(first) and len(lines) > 1 and lines[1].startswith("{"):
        return [read_jsonl(path)]
    if os.path.getsize(path) <= JSON_DOC_MAX:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                doc = json.load(f)
        except (ValueError, RecursionError):
            doc = None
        if doc is not None:
            return [read_json_doc(doc, path)]
    if first.startswith("{") and not whole(first):
        return [read_text(path)]  # {'loss': 2.3, ...}: Python dicts, not JSON
    return [read_jsonl(path)]


def read_jsonl(path: str) -> Columns:
    """JSON lines (one object per line, e.g. a W&B / custom logger). A config or header record (its fields seen once)
    is set aside and its lr kept; lines that are not JSON are skipped and counted in a note (an error when most are)."""
    cols = Columns("jsonl")
    records: list[dict] = []
    bad: list[int] = []
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.replace("\x00", "").strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(n)
                if len(bad) == 1:
                    first_err = e.msg
                continue
            if isinstance(rec, dict):
                records.append(rec)
    if bad and len(bad) >= max(len(records), 1):
        raise LrkitError(f"{path}: line {bad[0]} is not valid JSON ({first_err}); fix or remove that line "
                         f"({len(bad)} of {n} lines are not JSON)")
    if bad:
        where = f"line {bad[0]}" if len(bad) == 1 else f"{len(bad)} lines (the first: line {bad[0]})"
        tail = " and every line after it" if bad == list(range(bad[0], bad[0] + len(bad))) and bad[-1] >= n - 1 \
            and len(bad) > 1 else ""
        cols.notes.append(f"{where}{tail} not valid JSON: skipped, the rest read")
    _records_to_columns(records, cols, path)
    return cols


def _flatten(d: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, d


def _records_to_columns(records: list[dict], cols: Columns, path: str) -> None:
    """Metric records -> columns; records whose fields appear in fewer than 3 records (a config or header) are
    set aside and their lr-like settings kept in ``cols.config``."""
    counts: dict[str, int] = {}
    for rec in records:
        for k, v in rec.items():
            if _numeric(v):
                counts[k] = counts.get(k, 0) + 1
    repeated = {k for k, c in counts.items() if c >= min(3, max(len(records) - 1, 1))}
    metric_recs, config_recs = [], []
    for rec in records:
        nums = [k for k, v in rec.items() if _numeric(v)]
        if nums and sum(k in repeated for k in nums) >= 0.5 * len(nums):
            metric_recs.append(rec)
        else:
            config_recs.append(rec)
    if config_recs and metric_recs:
        for rec in config_recs:
            _take_config(rec, cols.config)
        cols.notes.append(f"{len(config_recs)} record(s) with settings rather than metrics (a config or header) "
                          "were set aside" + (f"; lr {cols.config['lr']:g} from {cols.config['lr_from']}"
                                              if "lr" in cols.config else ""))
    elif not metric_recs:
        metric_recs = records
    step_key = _step_key(metric_recs)
    series: dict[str, tuple[list, list]] = {}
    for i, rec in enumerate(metric_recs):
        step = rec.get(step_key, i) if step_key else i
        if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step):
            continue
        for k, v in rec.items():
            if k == step_key:
                continue
            if _numeric(v):
                s = series.setdefault(k, ([], []))
                s[0].append(step)
                s[1].append(float(v))
    if not series:
        raise LrkitError(f"{path}: no numeric values found; each record needs fields like {{\"step\": 1, \"loss\": 0.5}}")
    if not step_key:
        cols.notes.append("no step field: used the record number as the step")
    elif step_key == "epoch" and any(k in rec for rec in metric_recs[:50] for k in ("epoch",)):
        cols.unit = "epoch"
    for k, (s, v) in series.items():
        cols[k] = (np.asarray(s, dtype=np.float64), np.asarray(v, dtype=np.float64))


def _numeric(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, str) and v.strip().lower() in _NONFINITE


def _step_key(records: list[dict]) -> str:
    """The step field most records carry ('' when none): a step counter, else a whole-number epoch."""
    sample = records[: 1000]
    for k in STEP_KEYS:
        if sum(1 for r in sample if k in r) >= 0.5 * len(sample):
            return k
    eps = [r.get("epoch") for r in sample if "epoch" in r]
    if eps and len(eps) >= 0.5 * len(sample) and all(isinstance(e, (int, float)) for e in eps):
        if all(float(e).is_integer() for e in eps) and len(set(eps)) == len(eps):
            return "epoch"
    return ""


def _take_config(doc: Any, config: dict[str, Any]) -> None:
    """lr-like settings (lr, learning_rate, ... in (0, 10)) and the scheduler's name from a config object."""
    for path, v in _flatten(doc):
        last = path.rsplit(".", 1)[-1].lower()
        if last in ("lr", "learning_rate", "learning-rate", "base_lr", "max_lr", "peak_lr", "init_lr", "lr0") and \
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 10 and "lr" not in config:
            config["lr"], config["lr_from"] = float(v), f"the setting {path!r}"
        elif last in ("lr_scheduler", "lr_scheduler_type", "scheduler", "lr_schedule", "schedule") and \
                isinstance(v, str) and "scheduler" not in config:
            config["scheduler"] = v
        elif last in ("warmup_steps", "num_warmup_steps", "warmup_iters", "warmup") and isinstance(v, (int, float)) \
                and not isinstance(v, bool) and "warmup_steps" not in config:
            config["warmup_steps"] = float(v)
        elif last in ("max_steps", "num_training_steps", "total_steps", "max_iters", "num_iterations", "train_iters") \
                and isinstance(v, (int, float)) and not isinstance(v, bool) and "total_steps" not in config:
            config["total_steps"] = float(v)


def read_json_doc(doc: Any, path: str) -> Columns:
    """A JSON document: the largest table of metrics inside it, either a list of records or an object of per-epoch
    lists; the lr and scheduler found elsewhere in the document go to ``config``."""
    tables: list[tuple[tuple[bool, int], str, Any, str]] = []  # (score, kind, table, where)

    def visit(x: Any, where: str, depth: int) -> None:
        if depth > 8:
            return
        if isinstance(x, list):
            recs = [r for r in x if isinstance(r, dict)]
            if len(recs) >= 2 and len(recs) >= 0.8 * len(x):
                keys = {k for r in recs[:200] for k, v in r.items() if _numeric(v)}
                if keys:
                    tables.append(((pick_loss_column(keys) is not None, len(recs)), "records", recs, where))
            return
        if isinstance(x, dict):
            lists = {k: v for k, v in x.items() if isinstance(v, list) and len(v) >= 2
                     and all(_numeric(e) or e is None for e in v)}
            if lists:
                n = max(len(v) for v in lists.values())
                tables.append(((pick_loss_column(lists) is not None, n), "lists", lists, where))
            for k, v in x.items():
                visit(v, f"{where}.{k}" if where else str(k), depth + 1)

    visit(doc, "", 0)
    if not tables:
        raise LrkitError(f"{path}: a JSON document with no metrics lrkit can find (looked for a list of records such "
                         "as [{\"step\": 1, \"loss\": 0.5}, ...] and for lists of numbers such as {\"loss\": [...]})")
    _, kind, table, where = max(tables, key=lambda t: t[0])
    cols = Columns("json")
    if kind == "records":
        _records_to_columns(table, cols, path)
    else:
        for k, v in table.items():
            vals = np.array([math.nan if e is None else float(e) for e in v], dtype=np.float64)
            cols[k] = (np.arange(len(vals), dtype=np.float64), vals)
        cols.unit = "index"
        cols.notes.append(f"per-epoch lists{f' under {where!r}' if where else ''}: one step per list entry")
    if where and kind == "records":
        cols.notes.append(f"metrics read from the records under {where!r}")
    if isinstance(doc, dict):
        _take_config(doc, cols.config)
    return cols


# ------------------------------------------------------------------------------------------------------ text logs
def read_text(path: str) -> Columns:
    """A text log of the ``key value`` family (:mod:`lrkit.doctor.textlog`), streamed line by line."""
    with open(path, "rb") as f:
        log = textlog.parse(raw.decode("utf-8", errors="replace") for raw in f)
    if not log.series:
        raise LrkitError(f"{path}: no log lrkit knows: not a CSV with a header, not JSON, and no repeated "
                         "'key value' lines (such as 'step 10 | loss 2.31 | lr 3e-4') in its text; export the "
                         "metrics as CSV (step,loss,lr) or pass the log file the trainer wrote")
    steps, unit, notes = textlog.axis(log)
    cols = Columns("text")
    cols.unit = unit
    cols.notes += notes
    for k, c in log.series.items():
        st = steps[k]
        ok = np.isfinite(st)  # values before the first step counter (code or config echoed into the log) are not read
        if ok.sum() >= textlog.MIN_LINES:
            cols[k] = (st[ok], c["value"][ok])
    if not cols:
        raise LrkitError(f"{path}: its 'key value' lines have no step, iteration or epoch counter lrkit can place "
                         "them by; export the metrics as CSV (step,loss,lr)")
    main = max(cols, key=lambda k: (len(cols[k][1]), pick_loss_column([k]) is not None))
    last = log.last_line[main]
    cols.notes.insert(0, f"text log: {len(cols[main][1])} values of {main!r} on lines {log.first_line}-{last} of "
                         f"{log.lines}")
    if log.strides.get(main, 1) > 1:
        cols.notes.append(f"a very long log: each point is the mean of {log.strides[main]} consecutive values")
    if log.lines - last > max(100, 0.05 * log.lines):
        cols.notes.append(f"no records after line {last} of {log.lines}: the rest of the file is not this log "
                          "(read up to there)")
    return cols


# ------------------------------------------------------------------------------------------- Hugging Face Trainer
def read_trainer_state(path: str) -> Columns:
    """``trainer_state.json``: train rows of ``log_history`` (loss = mean over the logging window), eval rows."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except json.JSONDecodeError as e:
        raise LrkitError(f"{path}: not valid JSON ({e}); is the file complete?") from e
    hist = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(hist, list):
        raise LrkitError(f"{path}: no 'log_history' list; this is not a Hugging Face trainer_state.json")
    rows = [r for r in hist if isinstance(r, dict) and "train_runtime" not in r]  # the last row is a summary
    cols = Columns("transformers")
    _records_to_columns(rows, cols, path)
    every = state.get("logging_steps")
    cols.semantics = (f"Hugging Face 'loss' is the mean training loss over each logging window "
                      f"({every} steps), rounded to 4 decimals" if every else
                      "Hugging Face 'loss' is the mean training loss over each logging window")
    cols.window = int(every) if isinstance(every, (int, float)) and every >= 1 else None
    if isinstance(state.get("max_steps"), (int, float)):
        cols.config["total_steps"] = float(state["max_steps"])
    return cols


# --------------------------------------------------------------------------------------------------- TensorBoard
def read_tensorboard(path: str) -> Columns:
    """TensorBoard event file or folder (every scalar kept: no reservoir sampling); TF2 tensor summaries too."""
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
        from tensorboard.util import tensor_util
    except ImportError as e:
        raise missing_extra("tensorboard", "tensorboard") from e
    if os.path.isdir(path):
        dirs = sorted({root for root, _, files in os.walk(path) if any("tfevents" in f for f in files)})
    else:
        dirs = [path]
    cols = Columns("tensorboard")
    for d in dirs:
        prefix = "" if len(dirs) == 1 or not os.path.isdir(path) else os.path.relpath(d, path).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix
        acc = ea.EventAccumulator(d, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 1,
                                                    ea.IMAGES: 1, ea.AUDIO: 1, ea.COMPRESSED_HISTOGRAMS: 1})
        try:
            acc.Reload()
        except Exception as e:  # corrupt records raise DataLossError or a protobuf DecodeError
            raise LrkitError(f"{d}: corrupt TensorBoard event file ({type(e).__name__}: {e}); "
                             "re-export the run or pass another event file") from e
        tags = acc.Tags()
        for tag in tags.get("scalars", []):
            ev = acc.Scalars(tag)
            cols[f"{prefix}/{tag}" if prefix else tag] = (
                np.array([e.step for e in ev], dtype=np.float64), np.array([e.value for e in ev], dtype=np.float64))
        for tag in tags.get("tensors", []):
            ev = acc.Tensors(tag)
            vals = []
            for e in ev:
                a = tensor_util.make_ndarray(e.tensor_proto)
                vals.append(float(a) if a.size == 1 and a.dtype.kind in "fiu" else math.nan)
            if ev and not all(math.isnan(v) for v in vals):
                cols[f"{prefix}/{tag}" if prefix else tag] = (np.array([e.step for e in ev], dtype=np.float64),
                                                              np.array(vals, dtype=np.float64))
    if not cols:
        raise LrkitError(f"{path}: no scalar summaries could be read (an empty, truncated or corrupt event file?); "
                         "check that training wrote scalars, or pass another event file")
    return cols


# -------------------------------------------------------------------------------------------------------- MLflow
def _mlflow_runs(path: str) -> list[str]:
    """The MLflow run folders in an experiment folder (``mlruns/<id>``) or an ``mlruns`` root, in name order."""
    runs = []
    for e in sorted(os.listdir(path)):
        sub = os.path.join(path, e)
        if not os.path.isdir(sub) or e.startswith("."):
            continue
        if os.path.isdir(os.path.join(sub, "metrics")):
            runs.append(sub)
        elif os.path.isfile(os.path.join(sub, "meta.yaml")) or e.isdigit():  # an experiment inside mlruns/
            runs += [os.path.join(sub, r) for r in sorted(os.listdir(sub))
                     if os.path.isdir(os.path.join(sub, r, "metrics"))]
    return runs


def _meta_field(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return line.split(":", 1)[1].strip().strip("'\"") or None
    except OSError:
        return None
    return None


def read_mlflow(run_dir: str) -> Columns:
    """A local MLflow run folder: ``metrics/<key>`` files of ``timestamp value step`` lines (keys may nest); the run's
    name from ``meta.yaml`` and its lr from ``params/``."""
    root = os.path.join(run_dir, "metrics")
    name = _meta_field(os.path.join(run_dir, "meta.yaml"), "run_name") or os.path.basename(os.path.normpath(run_dir))
    cols = Columns("mlflow", name)
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            full = os.path.join(dirpath, f)
            key = os.path.relpath(full, root).replace(os.sep, "/")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    a = np.loadtxt(full, dtype=np.float64, ndmin=2)
            except ValueError as e:
                raise LrkitError(f"{full}: not an MLflow metric file of 'timestamp value step' lines ({e})") from e
            if a.size == 0:
                continue
            if a.shape[1] < 2:
                raise LrkitError(f"{full}: expected 'timestamp value step' on each line")
            steps = a[:, 2] if a.shape[1] >= 3 else np.arange(a.shape[0], dtype=np.float64)
            cols[key] = (steps, a[:, 1])
    params = os.path.join(run_dir, "params")
    if os.path.isdir(params):
        found = {}
        for dirpath, _, files in os.walk(params):
            for f in files:
                try:
                    with open(os.path.join(dirpath, f), encoding="utf-8", errors="replace") as fh:
                        text = fh.read(200).strip()
                except OSError:
                    continue
                key = os.path.relpath(os.path.join(dirpath, f), params).replace(os.sep, ".")
                found[key] = float(text) if _is_number(text) else text
        nested: dict[str, Any] = {}
        for k, v in found.items():
            nested[k] = v
        _take_config(nested, cols.config)
        if "lr" in cols.config:
            cols.config["lr_from"] = f"the run's params ({cols.config['lr_from'].split()[-1]})"
    if not cols:
        raise LrkitError(f"{run_dir}: the MLflow metrics/ folder holds no metric values")
    return cols


# --------------------------------------------------------------------------------------------- column selection
def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _is_eval(name: str) -> bool:
    return bool(_EVAL_WORDS.search(name.lower()))


def pick_loss_column(names: Iterable[str]) -> str | None:
    """The training-loss column among ``names``: a common name first, then any '*loss*' that is not eval/val."""
    names = list(names)
    lower = {_norm(n): n for n in names}
    for cand in LOSS_NAMES:
        if _norm(cand) in lower:
            return lower[_norm(cand)]
    for pattern in (_LOSS_WORD, _OTHER_LOSS):
        loss_like = [n for n in names if pattern.search(n.lower()) and not _is_eval(n) and
                     not NOT_A_LOSS.search(n.lower())]
        if loss_like:  # prefer per-step over per-epoch, 'train' over others, short names over long
            return min(loss_like, key=lambda n: ("epoch" in n.lower(), "train" not in n.lower(), len(n)))
    return None


def pick_perplexity_column(names: Iterable[str]) -> str | None:
    """A training perplexity column (the exponential of a loss), where no loss is logged."""
    ppl = [n for n in names if _PPL.search(n.lower()) and not _is_eval(n)]
    return min(ppl, key=lambda n: ("train" not in n.lower(), len(n))) if ppl else None


def pick_eval_column(names: Iterable[str], chosen: str) -> str | None:
    """The eval/validation loss column that goes with the training loss ``chosen`` (None when there is none)."""
    evals = [n for n in names if n != chosen and _is_eval(n) and "loss" in n.lower() and not
             NOT_A_LOSS.search(n.lower()) and "ppl" not in n.lower()]
    if not evals:
        evals = [n for n in names if n != chosen and re.search(r"(^|[^a-z])(tel|vl)($|[^a-z])", n.lower())]
    if not evals:
        return None
    base = _norm(chosen).replace("train", "").strip("_/")

    def score(n: str) -> tuple:
        stem = _is_eval_stem(n)
        test_only = bool(re.search(r"(^|[^a-z])test([^a-z]|$)", n.lower())) and not re.search(
            r"(^|[^a-z])(val|valid|validation|eval|dev)([^a-z]|$)", n.lower())
        return (stem != base, "epoch" in n.lower() and "epoch" not in chosen.lower(), test_only, len(n))

    return min(evals, key=score)


def _is_eval_stem(name: str) -> str:
    return _EVAL_WORDS.sub("_", _norm(name)).strip("_/")


def _pick_lr(names: list[str], cols: Columns) -> str | None:
    """The lr column: a known name, or Lightning's ``lr-<Optimizer>``; never a column named after an lr value (one
    run's loss in a table of runs), and only values that can be an lr (finite ones in (0, 100))."""
    lower = {_norm(n): n for n in names}
    cands = [lower[_norm(c)] for c in LR_NAMES if _norm(c) in lower]
    cands += [n for n in names if n.lower().startswith("lr-") and not n.lower().endswith(
        ("/pg1", "/pg2", "momentum")) and n not in cands]
    cands += [n for n in names if re.search(r"(^|[/_.])(lr|learning_rate)($|[/_.])", n.lower()) and not _is_eval(n)
              and not _LR_TAG.search(n.lower()) and n not in cands and "scale" not in n.lower()]
    for n in cands:
        v = cols[n][1]
        v = v[np.isfinite(v)]
        if v.size and (v >= 0).all() and v.max() < 100 and v.max() > 0:
            return n
    return None


def _pick_side(names: list[str], exact: tuple[str, ...], contains: tuple[str, ...]) -> str | None:
    lower = {_norm(n): n for n in names}
    for cand in exact:
        if _norm(cand) in lower:
            return lower[_norm(cand)]
    for n in names:
        if any(c in n.lower() for c in contains) and not _is_eval(n):
            return n
    return None


def columns_to_curve(cols: Columns, metric: str | None, source: str = "") -> Curve:
    """Pick the loss (or ``metric``), align lr, grad norm and eval loss to its steps, and build the Curve."""
    names = list(cols)
    run = f" (run {cols.run!r})" if cols.run else ""
    if metric is not None:
        if metric not in cols:
            raise LrkitError(f"{source}{run}: no column {metric!r}; columns: {', '.join(names) or '(none)'}")
        chosen = metric
    else:
        chosen = pick_loss_column([n for n in names if _nonconstant(cols[n][1])]) or pick_loss_column(names)
        ppl = pick_perplexity_column(names) if chosen is None else None
        if ppl is not None:  # only a perplexity: its log is the loss
            s_, v_ = cols[ppl]
            with np.errstate(divide="ignore", invalid="ignore"):
                cols[f"log({ppl})"] = (s_, np.where(v_ > 0, np.log(v_), np.nan))
            cols.notes.append(f"no loss column: read the log of the perplexity {ppl!r} (a perplexity is exp(loss))")
            chosen = f"log({ppl})"
            names = list(cols)
        if chosen is None:
            header = cols.header or names
            # columns that held no numbers, e.g. "np.float64(2.3)" or "tensor(2.3)" written as text
            text = [h for h in header if h not in names and h.lower() not in STEP_KEYS + ("epoch",)]
            why = f" (no numbers in: {', '.join(text)}; write plain numbers)" if text else ""
            raise LrkitError(f"{source}{run}: no loss-like column found{why}; columns: "
                             f"{', '.join(header[:40]) or '(none)'}; choose one with --metric NAME (metric=NAME in "
                             "Python)")
    notes = list(cols.notes)
    steps, values = cols[chosen]
    if values.size == 0:
        raise LrkitError(f"{source}{run}: the column {chosen!r} has no values; choose another with --metric")
    steps, values, order_notes = _order(steps, values)
    notes += order_notes
    others = [n for n in names if n != chosen]
    lr_name = _pick_lr(others, cols)
    gn_name = _pick_side(others, GRAD_NORM_NAMES, ("grad_norm", "gradient_norm", "gradnorm"))
    ur_name = next((n for n in others if "update" in n.lower() and "ratio" in n.lower()), None)
    al_name = next((n for n in others if "grad" in n.lower() and "align" in n.lower()), None)
    lrs = _align(cols, lr_name, steps) if lr_name else None
    if lrs is not None and not np.isfinite(lrs).any():
        lrs, lr_name = None, None
    extra = {}
    for key, nm in (("grad_norm", gn_name), ("update_ratio", ur_name), ("grad_alignment", al_name)):
        if nm:
            extra[key] = _align(cols, nm, steps)
    al = extra.get("grad_alignment")
    if al is not None and np.nanmax(np.abs(al), initial=0.0) > 1.0 + 1e-6:  # a cosine lies in [-1, 1]
        del extra["grad_alignment"]
        notes.append(f"the column {al_name!r} is not a gradient alignment (a cosine in [-1, 1]; it reaches "
                     f"{np.nanmax(np.abs(al)):.3g}): not read; rename it if it is something else")
        al_name = None
    eval_name = pick_eval_column(names, chosen) if not _is_eval(chosen) else None
    if eval_name:  # the eval curve at its own steps: drawn, and read for overfitting and divergence
        es, ev = cols[eval_name]
        es, ev, _ = _order(es, ev)
        extra[f"eval:{eval_name}"] = np.stack([es, ev])
    config = dict(cols.config)
    name_lr = _lr_from_name(cols.run) if cols.run else None
    if name_lr is None and source:
        name_lr = _lr_from_name(source)
    meta = {"format": cols.fmt, "source": source, "run": cols.run, "metric": chosen, "lr_column": lr_name,
            "grad_norm_column": gn_name, "update_ratio_column": ur_name, "grad_alignment_column": al_name,
            "eval_column": eval_name, "columns": names, "notes": notes, "semantics": cols.semantics,
            "window": cols.window, "config": config, "name_lr": name_lr, "unit": cols.unit}
    return Curve(np.round(steps).astype(np.int64), values, lrs, name=chosen, extra=extra, meta=meta)


def _nonconstant(v: np.ndarray) -> bool:
    f = v[np.isfinite(v)]
    return f.size > 1 and float(f.max()) != float(f.min())


def _order(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Steps in order. A log that starts over (the counter goes back to its first value: a run restarted and appended
    to the same file) is read from its last start; a counter that goes back part of the way (a run resumed from a
    checkpoint) keeps the last value logged for each repeated step."""
    notes = []
    d = np.diff(steps)
    if d.size and (d < 0).any():
        first_gap = float(np.median(d[d > 0])) if (d > 0).any() else 1.0
        restarts = np.flatnonzero((d < 0) & (steps[1:] <= steps[0] + first_gap)) + 1
        if restarts.size:
            start = int(restarts[-1])
            notes.append(f"the log starts over {restarts.size} time(s) (runs appended to one file): read the last "
                         f"run, from its step {steps[start]:g} ({len(steps) - start} of {len(steps)} values)")
            steps, values = steps[start:], values[start:]
            d = np.diff(steps)
    if d.size and (d < 0).any():
        notes.append(f"steps go backwards {int((d < 0).sum())} time(s) (a resumed run?): sorted by step, keeping the "
                     "last value logged for a repeated step")
    if d.size and (d <= 0).any():
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        last = np.r_[steps[1:] != steps[:-1], True]
        n_dup = int((~last).sum())
        if n_dup and not notes:
            notes.append(f"{n_dup} repeated step(s): kept the last value logged for each")
        steps, values = steps[last], values[last]
    return steps, values, notes


def _align(cols: Columns, name: str, steps: np.ndarray) -> np.ndarray:
    """The series ``name`` at ``steps``: the last value logged at or before each step (NaN before the first)."""
    s, v = cols[name]
    ok = np.isfinite(v)
    s, v = s[ok], v[ok]
    if s.size == 0:
        return np.full(steps.shape, np.nan)
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    idx = np.searchsorted(s, steps, side="right") - 1
    out = np.where(idx >= 0, v[np.clip(idx, 0, None)], np.nan)
    # before the first logged lr (an lr logged from step 1 while the loss starts at 0) the first value stands
    if np.isnan(out).any() and s.size:
        out = np.where(np.isnan(out) & (steps < s[0]) & (s[0] - steps <= max(1.0, float(np.median(np.diff(s)))
                                                                               if s.size > 1 else 1.0)), v[0], out)
    return out
