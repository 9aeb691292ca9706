"""The text-log reader: the ``key value`` family that trainers print, streamed line by line in bounded memory.

One tolerant parser reads what common trainers print to stdout or a log file::

    step    1/19560 | loss 11.009662 (+nanz)| norm 15.0789 (+nanz)| lr 8.57e-07 | 4230.95 ms     (llm.c)
    s:1 trl:10.9586 lr:0.000002 norm:15.18                                             (llm.c main.log)
    iter 10: loss 9.8, time 33ms, mfu 12%          step 250: train loss 6.0, val loss 6.1   (nanoGPT)
    step:120/3242 train_loss:4.3012 train_time:1234ms                                  (modded-nanogpt)
    iteration   10/ 500 | learning rate: 3.0E-05 | lm loss: 9.8E+00 | grad norm: 5.1 |   (Megatron)
    [step=1/15000,epoch=0]  then indented  train/CrossEntropyLoss=2.998                 (OLMo)
    Train Epoch: 1 [640/60000 (1%)]	Loss: 0.3                                        (PyTorch examples)
    epoch 001:    100 / 1000 loss=9.1, ..., num_updates=100, lr=1.2e-05 | valid on 'valid' subset | loss 8.5  (fairseq)
    Train: 0 [  50/1251 (  4%)]  Loss: 6.93 (6.93)  LR: 1.0e-06                        (timm)
    {'loss': 2.31, 'grad_norm': 1.2, 'learning_rate': 2e-05, 'epoch': 0.1}             (Hugging Face Trainer)
    Epoch 0:  45%|####5     | 450/1000 [00:10<00:12, loss=0.693]                        (tqdm / Lightning bars)

Each line is split into ``(key, number)`` pairs: a number's key is the text between it and the previous number
(``key: value``, ``key=value``, ``| key value |``, a Python or JSON dict). Counters (step, iteration, epoch, the
``N/M`` progress within an epoch) place the values on one step axis; a line with values but no counter (OLMo's
indented metrics) takes the counters of the line before it. A line that starts with or is labelled test / val /
valid / eval makes its plain keys ``test/loss`` and the like, so eval values never pass for the training loss.
Timestamps, ANSI colour codes and NUL bytes are ignored; ``\\r`` (progress bars) ends a line. A key seen on fewer
than :data:`MIN_LINES` lines (code or config echoed into the log) is dropped. Values are kept as 8-byte floats only,
so memory grows with the number of values, never with the size of the file.
"""

from __future__ import annotations

import ast
import json
import math
import re
from array import array
from dataclasses import dataclass

import numpy as np

MIN_LINES = 2  # a key must appear on this many lines to be a series (code or config echoed into a log appears once)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_STAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[T _]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"  # ISO date-times
    r"|\d{4}[-/]\d{2}[-/]\d{2}"  # dates
    r"|(?<![\w.])\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?"  # clock times
    r"|\[\d{2}:\d{2}(?:<\d{2}:\d{2})?")  # tqdm's [elapsed<remaining
# a number (or nan/inf) that is not part of an identifier (lr0, fp16, lr_1e-3), with an optional unit glued to it
_NUM = re.compile(r"(?<![\w.@])(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?P<unit>%|/[A-Za-z]+|[A-Za-z]+(?:/[A-Za-z]+)?)?"
                  r"|(?P<nan>[-+]?(?:nan|inf(?:inity)?))(?![A-Za-z]))", re.IGNORECASE)
_SEPARATORS = re.compile(r"[|,;\t]| - ")
_KEY_JUNK = " :=[](){}<>'\"#*>-~"
_DICT = re.compile(r"\{[^{}]*\}")
COUNTERS = {"step": "step", "steps": "step", "global_step": "step", "global step": "step", "globalstep": "step",
            "iter": "step", "iters": "step", "iteration": "step", "iterations": "step", "it": "step", "s": "step",
            "update": "step", "updates": "step", "num_updates": "step", "optimizer step": "step",
            "epoch": "epoch", "epochs": "epoch", "ep": "epoch"}
EVAL_WORDS = ("test", "val", "valid", "validation", "eval", "evaluation", "dev")
TRAIN_WORDS = ("train", "training", "train_inner", "trn")
_WORD = re.compile(r"[A-Za-z_]+")
# words that may stand before a counter word (train epoch, global step, validation loss at iteration, end of epoch)
_COUNTER_WORDS = frozenset(EVAL_WORDS + TRAIN_WORDS + ("global", "optimizer", "num", "total", "current", "loss", "at",
                                                       "of", "end", "the", "start", "after", "in"))
# a line of source code echoed into a log (modded-nanogpt records start with the training script)
_CODE = re.compile(r"^\s*(?:if|elif|else|for|while|def|class|return|import|from|with|try|except|assert|print|lambda|"
                   r"raise|yield|async|await)\b|\s(?:==|!=|<=|>=|\+=|-=)\s")  # (a progress bar's [=====] is no code)


COUNTER_FIELDS = ("rec", "step", "epoch", "progress", "total")  # what each value remembers of where it was logged
MAX_VALUES = 1 << 18  # past this many values a series keeps means of pairs (then of 4, 8, ...): memory stays bounded


class _Series:
    """One key's values, each with the counters of the line it was on; past :data:`MAX_VALUES` values, consecutive
    values are averaged in pairs (the counters of the first kept), and later ones arrive as means of ``stride``."""

    __slots__ = ("cols", "stride", "pending", "lines", "last_line")

    def __init__(self) -> None:
        self.cols = {k: array("d") for k in COUNTER_FIELDS + ("value",)}
        self.stride = 1
        self.pending: list[tuple[float, ...]] = []
        self.lines = 0
        self.last_line = 0

    def add(self, where: tuple[float, ...], value: float, line: int) -> None:
        self.lines += 1
        self.last_line = line
        if self.stride > 1:
            self.pending.append((*where, value))
            if len(self.pending) < self.stride:
                return
            vals = [p[-1] for p in self.pending]
            where, value = self.pending[0][:-1], sum(vals) / len(vals)
            self.pending = []
        for k, v in zip(COUNTER_FIELDS + ("value",), (*where, value)):
            self.cols[k].append(v)
        if len(self.cols["value"]) >= MAX_VALUES:
            for k, a in self.cols.items():
                x = np.frombuffer(a, dtype=np.float64)
                half = x[0::2] if k != "value" else (x[0::2] + x[1::2]) / 2 if x.size % 2 == 0 else \
                    np.r_[(x[:-1:2] + x[1::2]) / 2, x[-1]]
                self.cols[k] = array("d", half.tobytes())
            self.stride *= 2

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.frombuffer(a, dtype=np.float64).copy() if len(a) else np.empty(0) for k, a in self.cols.items()}


@dataclass
class TextLog:
    """What :func:`parse` found: each key's values with the counters of their line, and where the records are."""

    series: dict[str, dict[str, np.ndarray]]  # key -> {"value", "rec", "step", "epoch", "progress", "total"}
    lines: int
    first_line: int
    last_line: dict[str, int]  # key -> the last line it was on
    strides: dict[str, int]  # key -> how many values each kept value averages (1 unless the log was very long)


def clean_line(raw: str) -> str:
    """A line without NUL bytes, ANSI colour codes and timestamps."""
    return _STAMP.sub(" ", _ANSI.sub("", raw.replace("\x00", "")))


def _dict_pairs(line: str) -> list[tuple[str, float]] | None:
    """``(key, value)`` pairs of a Python or JSON dict printed on the line (None when there is none)."""
    m = _DICT.search(line)
    if not m or ":" not in m.group(0):
        return None
    text = m.group(0)
    try:
        d = json.loads(text)
    except ValueError:
        try:
            d = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return None
    if not isinstance(d, dict):
        return None
    out = []
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(k, str):
            continue
        if isinstance(v, (int, float)):
            out.append((k, float(v)))
        elif isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity", "-nan"):
            out.append((k, float(v.strip().lower().replace("-nan", "nan"))))
    return out


def _key(text: str) -> str:
    """The key in the text before a number: after the last separator, stripped of punctuation, lower case."""
    parts = _SEPARATORS.split(re.sub(r"\([^()]*\)", " ", text))
    k = parts[-1].rsplit("[", 1)[-1].strip(_KEY_JUNK + " \t")
    k = re.split(r":\s+", k)[-1]  # Test set: Average loss -> Average loss (the label goes to the line's kind)
    k = re.sub(r"\s+", " ", k).lower()
    words = k.split(" ")
    return " ".join(words[-4:]) if len(words) > 4 else k


def _kind(words: list[str]) -> str:
    """``test``/``val``/... when the words mark an evaluation line, else ''."""
    for w in words:
        if w in EVAL_WORDS:
            return w
        if w in TRAIN_WORDS:
            return ""
    return ""


def split_pairs(line: str) -> tuple[list[tuple[str, float, float | None]], str]:
    """The ``(key, value, total)`` pairs of one cleaned line (``total`` from ``N/M``), and the line's kind
    (an eval word such as ``test`` when the line is labelled as evaluation, else '')."""
    pairs: list[tuple[str, float, float | None]] = []
    prev_end = 0
    kind_words: list[str] = []
    first = True
    for m in _NUM.finditer(line):
        before = line[prev_end:m.start()]
        prev_end = m.end()
        raw = m.group("num") or m.group("nan")
        try:
            value = float(raw)
        except ValueError:  # pragma: no cover - the pattern only matches numbers
            continue
        unit = m.group("unit") or ""
        if before.strip() == "/" and pairs:  # N/M: M is the total of the value before it
            k, v, _ = pairs[-1]
            pairs[-1] = (k, v, value)
            continue
        if first:  # words before the first number label the line (Test Epoch, valid on 'valid' subset)
            kind_words = [w.lower() for w in _WORD.findall(before)]
            first = False
        else:  # a segment without numbers inside the line labels it too (fairseq: | valid on 'valid' subset |)
            for seg in _SEPARATORS.split(before)[:-1]:
                kind_words += [w.lower() for w in _WORD.findall(seg)]
        key = _key(before)
        if unit and unit not in ("%",) and not key:
            continue  # 4230.95 ms, 45.0it/s: a unit with no name
        pairs.append((key, value, None))
    return pairs, _kind(kind_words)


def _counter(key: str) -> tuple[str, str] | None:
    """``(kind of counter, eval word)`` when the key is a counter (``step``, ``test epoch``, ``validation loss at
    iteration``, a bare ``train`` / ``test``), else None; ``backend_steps`` and the like are settings, not counters."""
    if key in COUNTERS:
        return COUNTERS[key], ""
    words = key.replace("/", " ").replace("_", " ").split(" ")
    last = words[-1]
    if last in COUNTERS and len(words) <= 4 and all(w in _COUNTER_WORDS for w in words[:-1]):
        return COUNTERS[last], _kind(words[:-1])
    if len(words) == 1 and (key in EVAL_WORDS or key in TRAIN_WORDS):  # timm: "Train: 0 [...]" = epoch 0
        return "epoch", _kind(words)
    return None


def _is_evalish(key: str) -> bool:
    words = re.split(r"[^a-z]+", key)
    return any(w in EVAL_WORDS for w in words)


def _has_train_word(key: str) -> bool:
    words = re.split(r"[^a-z]+", key)
    return any(w in TRAIN_WORDS for w in words)


def _line_record(part: str) -> tuple[tuple, dict[str, float], list[tuple[str, float]]] | None:
    """One raw line -> (its template: the keys in order, its counters, its values), or None without numbers (or a
    line of source code)."""
    if not any(ch.isdigit() for ch in part) or _CODE.search(part):
        return None
    line = clean_line(part)
    dict_pairs = _dict_pairs(line)
    kind = ""
    if dict_pairs is not None:
        if any(k == "train_runtime" for k, _ in dict_pairs):
            return None  # the Hugging Face Trainer's end-of-training summary: not a step
        pairs = [(k.lower(), v, None) for k, v in dict_pairs]
        rest, _ = split_pairs(_DICT.sub(" ", line))
        pairs += rest
    else:
        pairs, kind = split_pairs(line)
    if not pairs:
        return None
    counters: dict[str, float] = {}
    values: list[tuple[str, float]] = []
    for key, value, tot in pairs:
        c = _counter(key) if key else None
        if key == "" and tot is not None:  # 450/1000 with no name: the position within the epoch
            counters.setdefault("progress", value)
            counters.setdefault("total", tot)
        elif c is not None and value == value and value >= 0 and not math.isinf(value):
            what, ev = c
            kind = kind or ev
            counters.setdefault(what, value)
            if tot is not None:
                counters.setdefault("of", tot)  # step 1/15000, Epoch 1/12: a counter with its total
        elif key and any(ch.isalpha() for ch in key) and len(key) <= 60:
            values.append((key, value))
    if "progress" not in counters and "step" not in counters:
        m = re.search(r"\[\s*(\d+)\s*/\s*(\d+)", line)  # Train Epoch: 1 [640/60000 (1%)]
        if m:
            counters["progress"], counters["total"] = float(m.group(1)), float(m.group(2))
    if kind:
        values = [(k if (_is_evalish(k) or _has_train_word(k)) else f"{kind}/{k}", v) for k, v in values]
        counters.pop("progress", None)  # an evaluation's own loop (Test: [48/48]) is no position in training
        counters.pop("total", None)
    template = (kind, tuple(sorted(counters)), tuple(k for k, _ in values))
    return template, counters, values


def parse(lines, min_lines: int = MIN_LINES) -> TextLog:
    """Parse an iterable of raw text lines (``\\r`` inside a line also ends it); see the module docstring.

    A line's own counters place its values; a line without counters takes those of the last line that had them,
    but only from a kind of line (its template: the keys, in order) seen before, so code or config echoed into a log
    (each line once) sets no step; a key on fewer than ``min_lines`` lines is dropped. Memory is bounded: past
    :data:`MAX_VALUES` values a series keeps means of consecutive values."""
    seen: dict[tuple, int] = {}
    series: dict[str, _Series] = {}
    state = {"step": math.nan, "epoch": math.nan, "progress": math.nan, "total": math.nan}
    n_lines = first_line = 0
    rec = 0
    nan = math.nan
    for raw in lines:
        for part in raw.split("\r"):
            n_lines += 1
            r = _line_record(part)
            if r is None:
                continue
            template, counters, values = r
            count = seen.get(template, 0) + 1
            seen[template] = count
            own = dict(counters)
            counted = own.pop("of", None) is not None
            if "epoch" in own and own["epoch"] != state["epoch"] and "progress" not in own:
                own["progress"] = own["total"] = nan  # a new epoch starts its position afresh
            # a kind of line seen before, or a counter with its total (step 1/15000): a log's own counters, which
            # carry over to the lines after it (code echoed into a log, such as steps=10, is neither)
            if count >= 2 or counted:
                state.update(own)
                where_state = state
            else:
                where_state = {**state, **own}
            if not values:
                continue
            if not first_line:
                first_line = n_lines
            where = (float(rec), where_state["step"], where_state["epoch"], where_state["progress"],
                     where_state["total"])
            rec += 1
            done = set()
            for k, v in values:
                if k in done:
                    continue  # the same key twice on a line: the first is the value (timm: Loss 6.9 (6.9 avg))
                done.add(k)
                sr = series.get(k)
                if sr is None:
                    sr = series[k] = _Series()
                sr.add(where, v, n_lines)
    kept = {k: sr for k, sr in series.items() if sr.lines >= min_lines}
    return TextLog({k: sr.arrays() for k, sr in kept.items()}, n_lines, first_line,
                   {k: sr.last_line for k, sr in kept.items()}, {k: sr.stride for k, sr in kept.items()})


def axis(log: TextLog) -> tuple[dict[str, np.ndarray], str, list[str]]:
    """One step for every value of every series, on one axis for the whole log: the global step counter (made
    cumulative where it restarts each epoch) when most values have one, else the position within epochs (``epoch x
    epoch length + position``), else the epoch, else the order of the logged lines. Returns (steps by key, what the
    unit is, notes)."""
    cols = log.series
    total_values = sum(c["value"].size for c in cols.values()) or 1

    def share(field_: str) -> float:
        return sum(np.isfinite(c[field_]).sum() for c in cols.values()) / total_values

    notes: list[str] = []
    out: dict[str, np.ndarray] = {}
    if share("step") > 0.5:
        restarted = False
        for k, c in cols.items():
            s = c["step"].copy()
            ok = np.isfinite(s)
            if np.isfinite(c["epoch"]).any() and ok.any():
                fixed, r = restart_per_epoch(s[ok], fill_forward(c["epoch"].copy())[ok])
                s[ok] = fixed
                restarted |= r
            out[k] = s
        if restarted:
            notes.append("the step counter restarts every epoch: steps were made cumulative across epochs")
        return out, "step", notes
    if share("progress") > 0.3 and share("epoch") > 0.5:
        tots = [np.nanmax(c["total"]) for c in cols.values() if np.isfinite(c["total"]).any()]
        progs = [np.nanmax(c["progress"]) for c in cols.values() if np.isfinite(c["progress"]).any()]
        length = float(max(tots)) if tots else float(max(progs)) + 1.0
        e0 = min(float(np.nanmin(c["epoch"])) for c in cols.values() if np.isfinite(c["epoch"]).any())
        for k, c in cols.items():
            # a value with no position in its epoch (a test line after it) sits at the epoch's end
            out[k] = (c["epoch"] - e0) * length + np.where(np.isfinite(c["progress"]), c["progress"], length)
        notes.append(f"steps are positions within epochs of {length:g} (epoch x {length:g} + position)")
        return out, "position", notes
    if share("progress") > 0.5:
        return {k: c["progress"].copy() for k, c in cols.items()}, "position", notes
    if share("epoch") > 0.5 and all(np.all(c["epoch"][np.isfinite(c["epoch"])] % 1 == 0) for c in cols.values()):
        return {k: c["epoch"].copy() for k, c in cols.items()}, "epoch", notes
    if share("epoch") > 0.5:
        notes.append("steps are the order of the logged records (the log counts fractional epochs)")
    else:
        notes.append("no step, iteration or epoch counter: used the order of the logged lines")
    return {k: c["rec"].copy() for k, c in cols.items()}, "record", notes


def fill_forward(a: np.ndarray, lead: bool = True) -> np.ndarray:
    """Missing (NaN) values take the last value before them; the leading ones take the first value (``lead``) or
    stay NaN."""
    ok = np.isfinite(a)
    if ok.all() or not ok.any():
        return a
    idx = np.where(ok, np.arange(len(a)), 0)
    np.maximum.accumulate(idx, out=idx)
    out = a[idx]
    first = int(np.argmax(ok))
    out[:first] = a[first] if lead else np.nan
    return out


def restart_per_epoch(step: np.ndarray, epoch: np.ndarray) -> tuple[np.ndarray, bool]:
    """A step counter that restarts each epoch made cumulative: where the step goes back while the epoch moves on,
    the new epoch's steps are placed one logging interval after the previous epoch's last step. Returns
    (steps, whether it restarted); a counter that goes back without a new epoch (a resumed run) is left as it is."""
    if len(step) < 2:
        return step, False
    back = step[1:] < step[:-1]
    new_epoch = epoch[1:] > epoch[:-1]
    restarts = np.flatnonzero(back & new_epoch) + 1
    if not restarts.size or (back & ~new_epoch).sum() > restarts.size:
        return step, False
    out = step.astype(np.float64).copy()
    bounds = np.r_[0, restarts, len(step)]
    for a, b, c in zip(bounds[:-2], bounds[1:-1], bounds[2:]):
        d = np.diff(out[a:b])
        gap = float(np.median(d[d > 0])) if (d > 0).any() else 1.0
        out[b:c] += out[b - 1] + gap - out[b]
    return out, True
