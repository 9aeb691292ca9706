"""The quality benchmark's bookkeeping: the task-grouped folds and the accuracy-by-distance line."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks", "doctor"))
import bench_quality  # noqa: E402


def test_folds_deal_every_task_into_exactly_one_fold():
    tasks = [f"task{i:03d}" for i in range(88)]
    parts = bench_quality.folds(tasks)
    assert len(parts) == bench_quality.FOLDS == 12
    dealt = [t for p in parts for t in p]
    assert sorted(dealt) == tasks  # each task once, none lost
    assert {len(p) for p in parts} == {7, 8}  # 88 = 4 x 8 + 8 x 7
    assert parts == bench_quality.folds(list(tasks))  # a fixed order: the same folds every run
    assert parts[0] != sorted(tasks)[:8]  # dealt at random, not in name order (tasks of one data set sit together)


def test_by_distance_counts_each_distance_apart(capsys):
    def run(label, ratio, doctor):
        return {"label": label, "lr": ratio, "best_lr": 1.0, "doctor": doctor}

    runs = ([run("too_high", 4.0, "lower"), run("too_high", 4.0, "keep"), run("too_high", 8.0, "lower")]
            + [run("too_high", 2.0 ** k, "lower") for k in (6, 7)] + [run("too_high", 2.0 ** 9, "keep")]
            + [run("too_low", 1 / 16, "raise"), run("too_low", 1 / 16, "keep"), run("too_low", 1 / 16, "keep"),
               run("too_low", 2.0 ** -8, "raise")]
            + [run("good", 1.0, "lower")])  # good runs are not part of it
    bench_quality.by_distance(runs, "t")
    out = capsys.readouterr().out.strip()
    assert out == ("doctor by lr / best lr, t: < 1/32x 100% (1)  1/16x 33% (3)  4x 50% (2)  8x 100% (1)  "
                   "> 32x 67% (3)")
