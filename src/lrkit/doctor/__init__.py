"""The learning-rate doctor: read any training log, say what is wrong with the lr, and watch live.

``diagnose(curve_or_path)`` -> :class:`Diagnosis`; ``read_log(path)`` -> :class:`~lrkit.curve.Curve`;
:class:`Monitor` runs the same checks online, O(1) per step. numpy only: no framework is imported here.
"""

from __future__ import annotations

import os
from typing import Any

from lrkit.curve import Curve
from lrkit.doctor.checks import Diagnosis, Finding, Recommendation, Thresholds
from lrkit.doctor.checks import diagnose as _diagnose_curve
from lrkit.doctor.monitor import Event, Monitor
from lrkit.doctor.readers import read_log

__all__ = ["Diagnosis", "Event", "Finding", "Monitor", "Recommendation", "Thresholds", "diagnose", "read_log"]


def diagnose(curve_or_path: Curve | str | os.PathLike, metric: str | None = None, running_mean: bool = False,
             **thresholds: Any) -> Diagnosis:
    """Diagnose a loss curve or a training log file/folder (format auto-detected); ``metric`` picks the column.

    Returns a :class:`Diagnosis`: findings (diverging, spiking, oscillating, too_slow, plateau, healthy) with
    their steps and evidence, and a recommendation (raise / lower / keep the lr, by about what factor).
    ``running_mean=True`` for Keras batch-level logs (see :func:`read_log`); ``thresholds`` override
    :class:`Thresholds` fields."""
    if isinstance(curve_or_path, (str, os.PathLike)):
        curve = read_log(curve_or_path, metric=metric, running_mean=running_mean)
    else:
        curve = curve_or_path
        if metric is not None and metric != curve.name:
            from lrkit.errors import LrkitError

            raise LrkitError(f"metric={metric!r} was given with a Curve named {curve.name!r}; pass a log path to "
                             "choose a column, or leave metric out")
    return _diagnose_curve(curve, **thresholds)
