"""The learning-rate doctor: read the training logs people have, say what is wrong with the lr, and watch live.

``diagnose(curve_or_path)`` -> :class:`Diagnosis`; ``diagnose_runs([...])`` -> :class:`SweepDiagnosis` (several runs
of one sweep, compared); ``read_log(path)`` / ``read_runs(path)`` -> :class:`~lrkit.curve.Curve` s; :class:`Monitor`
runs the same checks online, O(1) per step. numpy only: no framework is imported here.
"""

from __future__ import annotations

import os
from typing import Any

from lrkit.curve import Curve
from lrkit.doctor.checks import Diagnosis, Features, Finding, Recommendation, Schedule, Thresholds
from lrkit.doctor.checks import diagnose as _diagnose_curve
from lrkit.doctor.compare import SweepDiagnosis, diagnose_runs
from lrkit.doctor.monitor import Event, Monitor
from lrkit.doctor.readers import read_log, read_runs

__all__ = ["Diagnosis", "Event", "Features", "Finding", "Monitor", "Recommendation", "Schedule", "SweepDiagnosis",
           "Thresholds", "diagnose", "diagnose_runs", "read_log", "read_runs"]


def diagnose(curve_or_path: Curve | str | os.PathLike, metric: str | None = None, running_mean: bool = False,
             run: str | None = None, siblings: bool = True, **thresholds: Any) -> Diagnosis:
    """Diagnose a loss curve or a training log file/folder (format detected from the content); ``metric`` picks the
    column, ``run`` one run of a source that holds several (an MLflow experiment, a CSV with a column per run).

    Returns a :class:`Diagnosis`: findings (diverging, stuck, spiking, oscillating, overfitting, too_slow, plateau,
    healthy, or "not a loss" / "numerics" where the lr is not the question) with their steps and evidence, and a
    recommendation (raise / lower / keep the peak lr, by about what factor, how sure, and the check that would
    settle it). A log whose name carries its lr (``train_lr1e-3.log``, ``runs/lr_0.01/``) is compared with the other
    runs of its sweep found beside it, which then decide its advice (``siblings=False``: judge it alone; the notes say
    which runs were compared). ``running_mean=True`` for Keras batch-level logs (see :func:`read_log`); ``thresholds``
    override :class:`Thresholds` fields, and ``use_shape=False`` leaves out the fitted shape model."""
    if isinstance(curve_or_path, (str, os.PathLike)) and siblings and run is None and not running_mean:
        from lrkit.doctor.compare import diagnose_with_siblings

        d = diagnose_with_siblings(curve_or_path, metric=metric, **thresholds)
        if d is not None:
            return d
    if isinstance(curve_or_path, (str, os.PathLike)):
        curve = read_log(curve_or_path, metric=metric, running_mean=running_mean, run=run)
    else:
        curve = curve_or_path
        if metric is not None and metric != curve.name:
            from lrkit.errors import LrkitError

            raise LrkitError(f"metric={metric!r} was given with a Curve named {curve.name!r}; pass a log path to "
                             "choose a column, or leave metric out")
    return _diagnose_curve(curve, **thresholds)
