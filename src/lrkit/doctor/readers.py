"""Readers: any training log -> :class:`~lrkit.curve.Curve` (steps, loss, lr, and extras such as grad norm).

Formats are auto-detected: CSV (any, incl. Lightning ``metrics.csv`` whose sparse rows are grouped by step),
JSON lines, Hugging Face ``trainer_state.json``, TensorBoard event files or folders (needs ``tensorboard``),
and MLflow run folders (``metrics/<key>`` files of ``timestamp value step`` lines). Each reader returns every
numeric column; :func:`read_log` then picks the loss column (or ``metric``) and says which one it used.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from collections.abc import Iterable

import numpy as np

from lrkit.curve import Curve, unroll_running_mean
from lrkit.errors import LrkitError, missing_extra

STEP_KEYS = ("step", "global_step", "_step", "steps", "iteration", "iter", "it", "batch", "trainer/global_step")
LOSS_NAMES = ("loss", "train_loss", "train/loss", "training_loss", "train_loss_step", "loss_step",
              "train/loss_step", "trainer/loss", "train/loss_iter", "batch_loss", "loss/train", "train_loss_iter",
              "epoch_loss", "train_loss_epoch", "loss_epoch")
LR_NAMES = ("lr", "learning_rate", "learning-rate", "train/learning_rate", "train/lr", "lr/pg0", "optim/lr",
            "lr-0", "lr_0")
GRAD_NORM_NAMES = ("grad_norm", "gradient_norm", "train/grad_norm", "grad-norm", "gradnorm", "optim/grad_norm",
                   "grad_norm/total", "train/gradient_norm")
_EVAL_WORDS = re.compile(r"(^|[^a-z])(val|valid|validation|eval|test|dev)([^a-z]|$)")
CHUNK_ROWS = 1_000_000


class Columns(dict):
    """Column name -> (steps, values) as numpy arrays; ``fmt`` names the format, ``notes`` what the reader did."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.fmt = fmt
        self.notes: list[str] = []
        self.semantics = ""


# ----------------------------------------------------------------------------------------------------- detection
def read_log(path: str | os.PathLike, metric: str | None = None, running_mean: bool = False) -> Curve:
    """Read a training log (format auto-detected) into a Curve of the loss column or ``metric``.

    ``running_mean=True``: the loss is a running mean that restarts each epoch (Keras batch-level logs); the
    per-batch losses are recovered from it (needs an ``epoch`` column). The Curve's ``meta`` says the format, the
    column used, the lr/grad-norm columns found, every column, and what the values mean."""
    cols = read_columns(path)
    curve = columns_to_curve(cols, metric, source=os.fspath(path))
    if running_mean:
        epoch_name = next((n for n in cols if n.lower() == "epoch"), None)
        if epoch_name is None:
            raise LrkitError(f"{path}: running_mean needs an 'epoch' column to know where the mean restarts; "
                             f"columns: {', '.join(cols)}")
        epochs = _align(cols, epoch_name, curve.steps)
        curve.values = unroll_running_mean(curve.values, epochs)
        curve.meta["semantics"] = ("the log held running means since the start of each epoch (Keras batch logs); "
                                   "per-batch losses were recovered from them")
    return curve


def read_columns(path: str | os.PathLike) -> Columns:
    """Every numeric series of a log, by name (format auto-detected)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LrkitError(f"{path}: no such file or folder; check the path")
    if os.path.isdir(path):
        return _read_dir(path)
    if os.path.getsize(path) == 0:
        raise LrkitError(f"{path}: the file is empty; point lrkit at a log that has rows")
    name = os.path.basename(path)
    if "tfevents" in name:
        return read_tensorboard(path)
    head = _head(path)
    if name == "trainer_state.json" or (name.endswith(".json") and '"log_history"' in head):
        return read_trainer_state(path)
    if name.endswith((".jsonl", ".ndjson")) or head.lstrip().startswith("{"):
        return read_jsonl(path)
    if name.endswith(".json"):
        return read_jsonl(path)
    return read_csv(path)


def _head(path: str, n: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(n)
    except OSError as e:
        raise LrkitError(f"{path}: cannot read the file ({e.strerror}); check its permissions") from e
    if b"\x00" in raw[:4096]:
        raise LrkitError(f"{path}: this is a binary file lrkit cannot read as a log; give a CSV, JSON lines, "
                         "trainer_state.json, TensorBoard event file, or an MLflow run folder")
    return raw.decode("utf-8", errors="replace")


def _read_dir(path: str) -> Columns:
    entries = os.listdir(path)
    if "metrics" in entries and os.path.isdir(os.path.join(path, "metrics")):
        return read_mlflow(path)
    if os.path.basename(os.path.normpath(path)) == "metrics" and all(
            os.path.isfile(os.path.join(path, e)) for e in entries) and entries:
        return read_mlflow(os.path.dirname(os.path.normpath(path)))
    if "trainer_state.json" in entries:
        return read_trainer_state(os.path.join(path, "trainer_state.json"))
    if "metrics.csv" in entries:
        return read_csv(os.path.join(path, "metrics.csv"))
    ckpts = sorted((e for e in entries if re.fullmatch(r"checkpoint-\d+", e)
                    and os.path.isfile(os.path.join(path, e, "trainer_state.json"))),
                   key=lambda e: int(e.split("-")[1]))
    if ckpts:  # a Trainer output_dir: the latest checkpoint's state holds the whole history
        return read_trainer_state(os.path.join(path, ckpts[-1], "trainer_state.json"))
    for _root, _, files in os.walk(path):
        if any("tfevents" in f for f in files):
            return read_tensorboard(path)
    for root, _, files in os.walk(path):
        for f in sorted(files):
            if f == "metrics.csv":
                return read_csv(os.path.join(root, f))
    raise LrkitError(f"{path}: a folder with no log lrkit knows (looked for TensorBoard event files, metrics.csv, "
                     "trainer_state.json, an MLflow metrics/ folder); pass the log file itself")


# ----------------------------------------------------------------------------------------------------------- CSV
def read_csv(path: str) -> Columns:
    """CSV/TSV with a header; streamed in chunks of a million rows; sparse rows (Lightning) are grouped by step."""
    head = _head(path)
    first = head.splitlines()[0] if head.strip() else ""
    if not first.strip():
        raise LrkitError(f"{path}: no header line; a CSV log needs a header naming its columns")
    delim = "\t" if first.count("\t") > first.count(",") else ("," if "," in first else
                                                                 (";" if ";" in first else ","))
    header = next(csv.reader([first], delimiter=delim))
    header = [h.strip() for h in header]
    if len(header) < 1 or all(_is_number(h) for h in header):
        raise LrkitError(f"{path}: the first line is not a header of column names; add one (e.g. step,loss,lr)")
    cols = Columns("lightning" if os.path.basename(path) == "metrics.csv" and "epoch" in header else "csv")
    try:
        data = _csv_dense(path, header, delim)
        present = None
    except ValueError:
        data, present = _csv_sparse(path, header, delim)
    if data.shape[0] == 0:
        raise LrkitError(f"{path}: the CSV has a header ({', '.join(header[:12])}) but no data rows")
    lower = [h.lower() for h in header]
    step_j = next((lower.index(k) for k in STEP_KEYS if k in lower), None)
    steps = data[:, step_j] if step_j is not None else np.arange(data.shape[0], dtype=np.float64)
    if step_j is None:
        cols.notes.append("no step column: used the row number as the step")
    has_step = np.isfinite(steps)
    for j, h in enumerate(header):
        if j == step_j:
            continue
        keep = has_step if present is None else has_step & present[:, j]
        if keep.any():
            cols[h] = (steps[keep], data[keep, j])
    cols.header = header  # type: ignore[attr-defined]
    return cols


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
        f.readline()
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


def _csv_sparse(path: str, header: list[str], delim: str) -> tuple[np.ndarray, np.ndarray]:
    """Slow path: empty and text cells are missing, literal ``nan``/``inf`` are kept; returns (data, present)."""
    rows: list[list[float]] = []
    width = len(header)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=delim)
        next(reader, None)
        for row in reader:
            if not row:
                continue
            vals = [math.nan] * width
            for j, cell in enumerate(row[:width]):
                cell = cell.strip()
                if cell:
                    try:
                        vals[j] = float(cell)
                    except ValueError:
                        pass
            rows.append(vals)
    data = np.asarray(rows, dtype=np.float64).reshape(-1, width)
    present = ~np.isnan(data)
    # a literal nan/inf counts as present (a diverged loss), an empty or text cell as missing
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=delim)
        next(reader, None)
        i = 0
        for row in reader:
            if not row:
                continue
            for j, cell in enumerate(row[:width]):
                if cell.strip().lower() in ("nan", "-nan", "inf", "-inf", "infinity"):
                    present[i, j] = True
            i += 1
    return data, present


# ---------------------------------------------------------------------------------------------------- JSON lines
def read_jsonl(path: str) -> Columns:
    """JSON lines (one object per line, e.g. a W&B / custom logger); a JSON list of objects also works."""
    cols = Columns("jsonl")
    with open(path, encoding="utf-8", errors="replace") as f:
        text_head = f.read(1)
        f.seek(0)
        if text_head == "[":
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                raise LrkitError(f"{path}: not valid JSON ({e}); fix the file or export it as CSV") from e
        else:
            records = []
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise LrkitError(f"{path}: line {n} is not valid JSON ({e.msg}); fix or remove that line") from e
    _records_to_columns(records, cols, path)
    return cols


def _records_to_columns(records: Iterable[dict], cols: Columns, path: str) -> None:
    series: dict[str, tuple[list, list]] = {}
    step_key = None
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            continue
        if step_key is None:
            step_key = next((k for k in STEP_KEYS if k in rec), "")
        step = rec.get(step_key, i) if step_key else i
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        for k, v in rec.items():
            if k == step_key or isinstance(v, bool):
                continue
            if isinstance(v, (int, float)):
                s = series.setdefault(k, ([], []))
                s[0].append(step)
                s[1].append(float(v))
            elif isinstance(v, str) and v.lower() in ("nan", "inf", "-inf", "infinity"):
                s = series.setdefault(k, ([], []))
                s[0].append(step)
                s[1].append(float(v))
    if not series:
        raise LrkitError(f"{path}: no numeric values found; each record needs fields like {{\"step\": 1, \"loss\": 0.5}}")
    if not step_key:
        cols.notes.append("no step field: used the record number as the step")
    for k, (s, v) in series.items():
        cols[k] = (np.asarray(s, dtype=np.float64), np.asarray(v, dtype=np.float64))


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
    cols.window = int(every) if isinstance(every, (int, float)) and every >= 1 else None  # type: ignore[attr-defined]
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
def read_mlflow(run_dir: str) -> Columns:
    """A local MLflow run folder: ``metrics/<key>`` files of ``timestamp value step`` lines (keys may nest)."""
    root = os.path.join(run_dir, "metrics")
    cols = Columns("mlflow")
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            key = os.path.relpath(full, root).replace(os.sep, "/")
            try:
                a = np.loadtxt(full, dtype=np.float64, ndmin=2)
            except ValueError as e:
                raise LrkitError(f"{full}: not an MLflow metric file of 'timestamp value step' lines ({e})") from e
            if a.size == 0:
                continue
            if a.shape[1] < 2:
                raise LrkitError(f"{full}: expected 'timestamp value step' on each line")
            steps = a[:, 2] if a.shape[1] >= 3 else np.arange(a.shape[0], dtype=np.float64)
            cols[key] = (steps, a[:, 1])
    if not cols:
        raise LrkitError(f"{run_dir}: the MLflow metrics/ folder holds no metric values")
    return cols


# --------------------------------------------------------------------------------------------- column selection
def _is_eval(name: str) -> bool:
    return bool(_EVAL_WORDS.search(name.lower()))


def pick_loss_column(names: Iterable[str]) -> str | None:
    """The training-loss column among ``names``: a common name first, then any '*loss*' that is not eval/val."""
    names = list(names)
    lower = {n.lower(): n for n in names}
    for cand in LOSS_NAMES:
        if cand in lower:
            return lower[cand]
    loss_like = [n for n in names if "loss" in n.lower() and not _is_eval(n)]
    if loss_like:  # prefer per-step over per-epoch, 'train' over others, short names over long
        return min(loss_like, key=lambda n: ("epoch" in n.lower(), "train" not in n.lower(), len(n)))
    return None


def _pick(names: Iterable[str], exact: tuple[str, ...], contains: tuple[str, ...]) -> str | None:
    names = list(names)
    lower = {n.lower(): n for n in names}
    for cand in exact:
        if cand in lower:
            return lower[cand]
    for n in names:  # Lightning's LearningRateMonitor: lr-AdamW, lr-AdamW/pg1
        if n.lower().startswith("lr-") and not n.lower().endswith(("/pg1", "/pg2", "momentum")):
            if "lr" in contains:
                return n
    for n in names:
        if any(c in n.lower() for c in contains) and not _is_eval(n):
            return n
    return None


def columns_to_curve(cols: Columns, metric: str | None, source: str = "") -> Curve:
    """Pick the loss (or ``metric``), align lr and grad norm to its steps, and build the Curve."""
    names = list(cols)
    if metric is not None:
        if metric not in cols:
            raise LrkitError(f"{source}: no column {metric!r}; columns: {', '.join(names) or '(none)'}")
        chosen = metric
    else:
        chosen = pick_loss_column(names)
        if chosen is None:
            header = getattr(cols, "header", names)
            # columns that held no numbers, e.g. "np.float64(2.3)" or "tensor(2.3)" written as text
            text = [h for h in header if h not in names and h.lower() not in STEP_KEYS + ("epoch",)]
            why = f" (no numbers in: {', '.join(text)}; write plain numbers)" if text else ""
            raise LrkitError(f"{source}: no loss-like column found{why}; columns: {', '.join(header) or '(none)'}; "
                             "choose one with --metric NAME (metric=NAME in Python)")
    notes = list(cols.notes)
    steps, values = cols[chosen]
    if values.size == 0:
        raise LrkitError(f"{source}: the column {chosen!r} has no values; choose another with --metric")
    steps, values, order_notes = _order(steps, values)
    notes += order_notes
    lr_name = _pick([n for n in names if n != chosen], LR_NAMES, ("lr", "learning_rate"))
    gn_name = _pick([n for n in names if n != chosen], GRAD_NORM_NAMES, ("grad_norm", "gradient_norm", "gradnorm"))
    ur_name = next((n for n in names if "update" in n.lower() and "ratio" in n.lower()), None)
    al_name = next((n for n in names if "grad" in n.lower() and "align" in n.lower()), None)
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
    for nm in names:  # eval curves at their own steps are kept for the plot
        if nm != chosen and _is_eval(nm) and "loss" in nm.lower():
            es, ev = cols[nm]
            ok = np.isfinite(ev)
            extra[f"eval:{nm}"] = np.stack([es[ok], ev[ok]])
            break
    meta = {"format": cols.fmt, "source": source, "metric": chosen, "lr_column": lr_name, "grad_norm_column": gn_name,
            "update_ratio_column": ur_name, "grad_alignment_column": al_name, "columns": names, "notes": notes,
            "semantics": cols.semantics, "window": getattr(cols, "window", None)}
    return Curve(steps.astype(np.int64), values, lrs, name=chosen, extra=extra, meta=meta)


def _order(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sort by step (stable) and keep the last value of a repeated step (a resumed run rewrote it)."""
    notes = []
    d = np.diff(steps)
    if d.size and (d < 0).any():
        n_back = int((d < 0).sum())
        notes.append(f"steps go backwards {n_back} time(s) (a resumed or restarted run?): sorted by step, "
                     "keeping the last value logged for a repeated step")
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
    return out
