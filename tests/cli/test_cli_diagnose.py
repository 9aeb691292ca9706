"""``lrkit diagnose``: verdicts, JSON for CI, plots next to the input, ranking, exit status on bad input."""

import json
import os

import numpy as np
import pytest

from lrkit import diagnose
from lrkit.cli import main

T = np.arange(600)


def write_run(path, loss, lr):
    with open(path, "w") as f:
        f.write("step,loss,lr\n")
        for i, v in enumerate(loss):
            f.write(f"{i},{v!r},{lr}\n")
    return str(path)


def runs(tmp_path):
    rng = np.random.default_rng(0)
    noise = 0.03 * rng.standard_normal(600)
    good = [float(v) for v in 0.4 + 2.0 * np.exp(-T / 40) + noise]
    slow = [float(v) for v in 2.4 - 0.0004 * T + noise]
    high = [float(v) for v in 0.4 + 2.0 * np.exp(-T / 10) + noise]
    high[300:] = [float("nan")] * 300
    return (write_run(tmp_path / "lr_0.01.csv", good, 0.01), write_run(tmp_path / "lr_0.0001.csv", slow, 1e-4),
            write_run(tmp_path / "lr_1.csv", high, 1.0))


def test_single_run_text_and_plot_next_to_input(tmp_path, capsys):
    good, _, _ = runs(tmp_path)
    assert main(["diagnose", good]) == 0
    out = capsys.readouterr().out
    # the CLI prints the library's verdict on the same file (which verdict an idealised synthetic curve deserves is
    # the shape model's call, measured on real curves in benchmarks/doctor, not asserted here)
    verdict = str(diagnose(good)).splitlines()[0]
    assert verdict.startswith("verdict: ") and verdict in out
    assert "metric 'loss'" in out and "lr column 'lr'" in out
    plot = tmp_path / "lr_0.01.diagnosis.png"
    assert plot.exists() and plot.stat().st_size > 10_000 and f"plot: {plot}" in out
    assert "grad norm column" not in out and "update ratio column" not in out


@pytest.mark.parametrize("alignment", [False, True])
def test_header_names_the_side_columns_it_read(tmp_path, capsys, alignment):
    path = tmp_path / "run.csv"
    path.write_text("step,loss,lr,gradnorm,param_update_ratio" + (",grad_alignment" if alignment else "") + "\n" + "".join(
        f"{i},{float(0.4 + 2.0 * np.exp(-i / 40))!r},0.01,1.0,0.001"
        + (f",{float(0.1 * np.cos(i / 9))!r}" if alignment else "") + "\n" for i in range(200)))
    assert main(["diagnose", str(path), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "lr column 'lr', grad norm column 'gradnorm', update ratio column 'param_update_ratio'" in out
    if alignment:
        assert "update ratio column 'param_update_ratio', gradient alignment column 'grad_alignment'" in out
        assert ("shape model (boosted trees and a sequence model on the loss, gradient norm, update/weight ratio and "
                "gradient alignment)") in out
    else:
        assert "gradient alignment column" not in out
        assert "shape model (boosted trees and a sequence model on the loss, gradient norm and update/weight ratio)" in out


def test_json_for_ci(tmp_path, capsys):
    _, slow, _ = runs(tmp_path)
    assert main(["diagnose", slow, "--json", "--no-plot", "--alone"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d == json.loads(json.dumps(diagnose(slow, siblings=False).to_dict()))  # the library's diagnosis, as JSON
    assert d["recommendation"]["action"] == "raise" and 1 < d["recommendation"]["factor"] <= 3
    assert d["metric"] == "loss" and d["findings"][0]["kind"] == "too_slow"
    assert not (tmp_path / "lr_0.0001.diagnosis.png").exists()


def test_several_runs_are_compared_as_one_sweep(tmp_path, capsys):
    files = runs(tmp_path)
    outdir = tmp_path / "plots"
    assert main(["diagnose", *files, "--plot", str(outdir), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["best"] == files[0] and d["ranking"][-1] == files[2]
    by_src = {r["name"]: r for r in d["runs"]}
    # the comparison decides each run's advice: the diverged run lowers to the best's lr, the slow one raises to it
    high, slow = by_src[files[2]]["recommendation"], by_src[files[1]]["recommendation"]
    assert high["action"] == "lower" and high["factor"] == pytest.approx(0.01) and by_src[files[2]]["lr"] == 1.0
    assert slow["action"] == "raise" and slow["factor"] == pytest.approx(100.0)
    assert by_src[files[0]]["recommendation"]["action"] == "keep" and by_src[files[0]]["lr_vs_best"] == 1.0
    assert by_src[files[2]]["lr_vs_best"] == pytest.approx(100.0)
    assert sorted(os.listdir(outdir)) == sorted(f"{os.path.basename(f)[:-4]}.diagnosis.png" for f in files)
    assert main(["diagnose", *files, "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert f"best: {files[0]} (lr 0.01, from the logged lr (lr))" in text
    assert f"3. {files[2]}: diverged, lr 1 -> lower x0.01" in text


def test_plot_and_no_plot_together_is_a_usage_error(tmp_path, capsys):
    good, _, _ = runs(tmp_path)
    assert main(["diagnose", good, "--no-plot", "--plot", str(tmp_path / "x.png")]) == 2
    assert "contradict" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("content,msg", [
    ("", "empty"),
    ("step,acc\n1,0.5\n", "no loss-like column found; columns: step, acc"),
    ("step,loss\n1,tensor(2.3)\n", "no loss-like column found (no numbers in: loss; write plain numbers)"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, content, msg):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    assert main(["diagnose", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err and err.startswith("lrkit diagnose: error:")
    assert not (tmp_path / "bad.diagnosis.png").exists()


def test_one_bad_among_several_still_reports_others(tmp_path, capsys):
    good, _, _ = runs(tmp_path)
    bad = tmp_path / "empty.csv"
    bad.write_text("")
    assert main(["diagnose", good, str(bad), "--no-plot"]) == 2
    cap = capsys.readouterr()
    assert str(diagnose(good)).splitlines()[0] in cap.out and "empty" in cap.err


def test_a_log_is_compared_with_the_runs_of_its_sweep_found_beside_it(tmp_path, capsys):
    good, slow, high = runs(tmp_path)  # lr_0.01.csv, lr_0.0001.csv, lr_1.csv: one sweep by their names
    d = diagnose(slow)
    assert d.recommendation.action == "raise" and d.recommendation.factor == pytest.approx(100.0)
    assert d.recommendation.certainty == "direct" and any("compared with 2 other run(s)" in n for n in d.notes)
    assert d.sweep is not None and d.sweep.names[d.sweep.best] == good
    alone = diagnose(slow, siblings=False)
    assert alone.sweep is None and alone.recommendation.factor <= 3  # one curve: at most 3x
    assert main(["diagnose", slow, "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "raise the lr about 100x" in out and "ranking (final training loss" in out
    assert main(["diagnose", slow, "--no-plot", "--alone"]) == 0
    assert "ranking" not in capsys.readouterr().out


def test_sweep_siblings_in_folders_and_files(tmp_path):
    from lrkit.doctor.compare import sweep_siblings

    for lr in ("0.01", "0.001", "0.0001"):
        d = tmp_path / "experiments" / "learning_rate" / f"learning_rate_{lr}"
        d.mkdir(parents=True)
        (d / "train.log").write_text("step 1 | loss 2.0\n")
    (tmp_path / "experiments" / "learning_rate" / "learning_rate_0.1").mkdir()  # no train.log inside: not a run
    (tmp_path / "experiments" / "learning_rate" / "other_0.5").mkdir()
    got = sweep_siblings(tmp_path / "experiments" / "learning_rate" / "learning_rate_0.001" / "train.log")
    assert [os.path.basename(os.path.dirname(g)) for g in got] == ["learning_rate_0.0001", "learning_rate_0.01"]
    for name in ("unet_lr1e_3", "unet_lr2e_3", "deeplab_lr1e_3"):
        (tmp_path / name).mkdir()
    assert [os.path.basename(g) for g in sweep_siblings(tmp_path / "unet_lr1e_3")] == ["unet_lr2e_3"]
    assert sweep_siblings(tmp_path / "experiments") == []  # no lr in its name
