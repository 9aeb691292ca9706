"""lr searches on Optuna's public API: :func:`sweep` (a short training at each candidate lr, or at lrs a sampler
draws) and :func:`stepwise_search` (raise the lr until the score gets clearly worse, then refine), with
:func:`stepwise` the search's decision logic on any ``evaluate(lrs, seed)``.

Every trial lives in an Optuna study (an SQLite file by default; ``postgresql://...`` across machines; a journal
file where no database exists): a rerun resumes without redoing finished trials, any number of worker processes
on any number of machines share the work, and a worker's death is noticed by Optuna's heartbeat and its trial
redone. The engine (:class:`SweepStudy`, :func:`run_points`) is public for custom searches.

Importing this package imports numpy only; Optuna is loaded when a search runs.
"""

from lrkit.search._engine import NonFiniteLoss, SweepStudy, SweepTrial, TrainFn, run_points
from lrkit.search._lrs import lrs_around, parse_lrs
from lrkit.search._records import SweepResult, TrialRecord, attach_verdicts
from lrkit.search._stepwise import StepTrial, StepwiseResult, check_stepwise_args, stepwise, stepwise_search
from lrkit.search._sweep import make_pruner, make_sampler, sweep

__all__ = [
    "NonFiniteLoss", "StepTrial", "StepwiseResult", "SweepResult", "SweepStudy", "SweepTrial", "TrainFn",
    "TrialRecord", "attach_verdicts", "check_stepwise_args", "lrs_around", "make_pruner", "make_sampler",
    "parse_lrs", "run_points", "stepwise", "stepwise_search", "sweep",
]
