"""The readers on the logs people have: trainers' text output, restarting step counters, config records, MLflow
experiments, a column per run, JSON documents. Every fixture is written here in the trainer's own format (the format
strings of each trainer's logging code), and every value read back must be the value written."""

import json
import tracemalloc

import numpy as np
import pytest

from lrkit import diagnose_runs
from lrkit.doctor import diagnose, read_log, read_runs
from lrkit.doctor.textlog import parse
from lrkit.errors import LrkitError

N = 60
RNG = np.random.default_rng(0)
LOSS = np.round(3.0 + 8.0 * np.exp(-np.arange(N) / 10) + 0.05 * RNG.standard_normal(N), 4)
LR = np.round(6e-4 * np.minimum(1.0, (np.arange(N) + 1) / 10), 10)
NORM = np.round(1.0 + RNG.random(N), 4)


def write(path, text, mode="w"):
    with open(path, mode, **({} if "b" in mode else {"newline": ""})) as f:
        f.write(text)
    return str(path)


def check(curve, steps, loss, lr=None, eval_name=None, eval_values=None):
    np.testing.assert_array_equal(curve.steps, steps)
    np.testing.assert_allclose(curve.values, loss, rtol=1e-6)
    if lr is not None:
        np.testing.assert_allclose(curve.lrs, lr, rtol=2e-3)
    if eval_name is not None:
        assert curve.meta["eval_column"] == eval_name
        np.testing.assert_allclose(curve.extra[f"eval:{eval_name}"][1], eval_values, rtol=1e-6)


def test_llmc_stdout_with_val_lines(tmp_path):
    lines = []
    for i in range(N):
        lines.append(f"step {i + 1:4d}/{N} | loss {LOSS[i]:7.6f} (+nanz)| norm {NORM[i]:6.4f} (+nanz)| lr {LR[i]:.2e} "
                     f"| 4230.95 ms | 29.5% bf16 MFU | 124015 tok/s")
        if (i + 1) % 20 == 0:
            lines.append(f"val loss {LOSS[i] + 0.1:f}")
    c = read_log(write(tmp_path / "train.log", "\n".join(lines) + "\n"))
    check(c, np.arange(1, N + 1), LOSS, np.array([float(f"{v:.2e}") for v in LR]), "val loss", LOSS[19::20] + 0.1)
    assert c.name == "loss" and c.meta["grad_norm_column"] == "norm" and c.meta["format"] == "text"


def test_llmc_main_log(tmp_path):
    lines = ["s:0 tel:11.0095"] + [f"s:{i} trl:{LOSS[i]:.4f} lr:{LR[i]:.6f} norm:{NORM[i]:.2f}" for i in range(N)]
    lines += [f"s:{N} tel:{LOSS[-1]:.4f}", f"s:{N // 2} tel:{LOSS[N // 2]:.4f}"[:0] or "s:30 tel:3.5"]
    c = read_log(write(tmp_path / "main.log", "\n".join(lines) + "\n"))
    check(c, np.arange(N), LOSS, np.round(LR, 6))
    assert c.name == "trl" and c.meta["eval_column"] == "tel"


def test_nanogpt_iter_and_eval_lines(tmp_path):
    lines = []
    for i in range(N):
        if i % 20 == 0:
            lines.append(f"step {i}: train loss {LOSS[i]:.4f}, val loss {LOSS[i] + 0.2:.4f}")
        lines.append(f"iter {i}: loss {LOSS[i]:.4f}, time 33.00ms, mfu 12.00%")
    c = read_log(write(tmp_path / "out.txt", "\n".join(lines)))
    check(c, np.arange(N), LOSS, None, "val loss", np.round(LOSS[::20] + 0.2, 4))


def test_megatron(tmp_path):
    lines = []
    for i in range(N):
        lines.append(f" iteration {i + 1:8d}/{N:8d} | consumed samples: {64 * (i + 1):12d} | elapsed time per iteration "
                     f"(ms): 1234.5 | learning rate: {LR[i]:.3E} | global batch size:    64 | lm loss: {LOSS[i]:.6E} | "
                     f"loss scale: 1.0 | grad norm: {NORM[i]:.3f} | number of skipped iterations:   0 | number of nan "
                     "iterations:   0 |")
        if (i + 1) % 30 == 0:
            lines.append(f" validation loss at iteration {i + 1} | lm loss value: {LOSS[i] + 0.3:.6E} | lm loss PPL: "
                         f"{np.exp(LOSS[i] + 0.3):.6E} | ")
    c = read_log(write(tmp_path / "megatron.log", "\n".join(lines)))
    check(c, np.arange(1, N + 1), LOSS, LR, "validation/lm loss value", LOSS[29::30] + 0.3)
    assert c.name == "lm loss"


def test_olmo_blocks_take_the_step_of_their_header(tmp_path):
    lines = []
    for i in range(N):
        lines.append(f"2024-03-01 10:00:{i % 60:02d}.123\tINFO\tolmo.train:816\t[step={i + 1}/{N},epoch=0]")
        lines.append(f"    train/CrossEntropyLoss={LOSS[i]:.4f}")
        lines.append(f"    train/Perplexity={np.exp(LOSS[i]):.4f}")
        lines.append(f"    optim/learning_rate_group0={LR[i]:.6f}")
    c = read_log(write(tmp_path / "olmo.log", "\n".join(lines)))
    check(c, np.arange(1, N + 1), LOSS, np.round(LR, 6))
    assert c.name == "train/crossentropyloss"


def test_pytorch_mnist_example_epochs_and_test_lines(tmp_path):
    lines, train, test = [], [], []
    k = 0
    for epoch in (1, 2, 3):
        for pos in range(0, 60000, 6400):
            lines.append(f"Train Epoch: {epoch} [{pos}/60000 ({100. * pos / 60000:.0f}%)]\tLoss: {LOSS[k]:.6f}")
            train.append(((epoch - 1) * 60000 + pos, LOSS[k]))
            k += 1
        lines.append(f"\nTest set: Average loss: {0.1 / epoch:.4f}, Accuracy: 9700/10000 (97%)\n")
        test.append(0.1 / epoch)
    c = read_log(write(tmp_path / "mnist.log", "\n".join(lines)))
    steps, values = zip(*train)
    check(c, np.array(steps), np.array(values), None, "test/average loss", np.round(test, 4))
    assert any("positions within epochs of 60000" in n for n in c.meta["notes"])


def test_modded_nanogpt_record_with_code_echoed_first(tmp_path):
    code = ("import os\nlr = 0.0036\nlr = 0.02\nlr = 0.3\nsteps=10\nsteps=5\nsteps=2\n"
            "print(f'step:{step}/{args.num_iterations} val_loss:{val_loss:.4f}')\n" + "=" * 100 + "\n")
    lines = [f"step:0/{N} val_loss:{LOSS[0]:.4f} train_time:0ms step_avg:nanms"]
    lines += [f"step:{i + 1}/{N} train_loss:{LOSS[i]:.4f} train_time:{326 * (i + 1)}ms step_avg:141.96ms"
              for i in range(N)]
    lines += [f"step:{s}/{N} val_loss:{LOSS[s - 1] + 0.1:.4f} train_time:{326 * s}ms step_avg:141.96ms"
              for s in (20, 40, 60)]
    c = read_log(write(tmp_path / "record.txt", code + "\n".join(lines)))
    val = [float(f"{v:.4f}") for v in (LOSS[0], *(LOSS[[19, 39, 59]] + 0.1))]
    check(c, np.arange(1, N + 1), LOSS, None, "val_loss", val)
    assert c.lrs is None  # the lr values in the echoed code are no series


def test_fairseq_train_inner_and_valid(tmp_path):
    lines = []
    for i in range(N):
        epoch, pos = 1 + i // 20, 1 + i % 20
        lines.append(f"2021-01-01 12:00:00 | INFO | train_inner | epoch {epoch:03d}:     {pos} / 20 loss={LOSS[i]:.3f}, "
                     f"nll_loss={LOSS[i] - 0.1:.3f}, ppl=478.2, wps=12345, ups=3.2, wpb=4000, bsz=128, "
                     f"num_updates={i + 1}, lr={LR[i]:.6g}, gnorm={NORM[i]:.3f}, loss_scale=128, train_wall=30, "
                     "gb_free=10.1, wall=35")
        if pos == 20:
            lines.append(f"2021-01-01 12:00:00 | INFO | valid | epoch {epoch:03d} | valid on 'valid' subset | loss "
                         f"{LOSS[i] + 0.2:.3f} | nll_loss 8.3 | ppl 315 | wps 100 | num_updates {i + 1}")
    c = read_log(write(tmp_path / "fairseq.log", "\n".join(lines)))
    r3 = np.array([float(f"{v:.3f}") for v in LOSS])
    check(c, np.arange(1, N + 1), r3, LR, "valid/loss", np.array([float(f"{v + 0.2:.3f}") for v in LOSS[19::20]]))
    assert c.meta["grad_norm_column"] == "gnorm"


def test_timm_train_and_test_lines(tmp_path):
    lines = []
    for i in range(N):
        epoch, pos = i // 10, (i % 10) * 100
        lines.append(f"Train: {epoch} [{pos:4d}/1000 ({pos / 10:3.0f}%)]  Loss: {LOSS[i]:.3f} ({LOSS[i] + 1:.3f})  Time: "
                     f"3.102s, 41.26/s  (3.102s, 41.26/s)  LR: {LR[i]:.3e}  Data: 2.3 (2.3)")
        if i % 10 == 9:
            lines.append(f"Test: [  48/48]  Time: 1.2 (1.2)  Loss:  {LOSS[i] + 0.5:.4f} (0.8)  Acc@1: 80.0 (80.0)")
    c = read_log(write(tmp_path / "timm.log", "\n".join(lines)))
    assert c.name == "loss" and c.meta["eval_column"] == "test/loss"
    np.testing.assert_allclose(c.values, [float(f"{v:.3f}") for v in LOSS])
    assert np.all(np.diff(c.steps) > 0)


def test_hf_trainer_printout_with_progress_bars_and_summary(tmp_path):
    text = ""
    for i in range(N):
        text += f"{int(100 * i / N):3d}%|###       | {i}/{N} [00:{i % 60:02d}<00:10,  2.00it/s]\r"
        text += f"{{'loss': {LOSS[i]}, 'grad_norm': {NORM[i]}, 'learning_rate': {LR[i]}, 'epoch': {0.05 * (i + 1):.2f}}}\n"
        if i % 20 == 19:
            text += f"{{'eval_loss': {LOSS[i] + 0.1}, 'eval_runtime': 1.5, 'epoch': {0.05 * (i + 1):.2f}}}\n"
    text += "{'train_runtime': 100.0, 'train_samples_per_second': 5.0, 'train_loss': 4.2, 'epoch': 3.0}\n"
    c = read_log(write(tmp_path / "stdout.txt", text))
    assert c.name == "loss" and c.meta["eval_column"] == "eval_loss"
    np.testing.assert_allclose(c.values, LOSS)
    np.testing.assert_allclose(c.lrs, LR)


def test_keras_fit_stdout(tmp_path):
    lines = []
    for e in range(12):
        lines.append(f"Epoch {e + 1}/12")
        lines.append(f"1875/1875 [==============================] - 5s 2ms/step - loss: {LOSS[e]:.4f} - accuracy: 0.9140 - "
                     f"val_loss: {LOSS[e] + 0.05:.4f} - val_accuracy: 0.9565")
    c = read_log(write(tmp_path / "keras.txt", "\n".join(lines)))
    assert c.name == "loss" and c.meta["eval_column"] == "val_loss"
    np.testing.assert_allclose(c.values, LOSS[:12])
    np.testing.assert_array_equal(c.steps, np.arange(12) * 1875 + 1875)


def test_torchtune_and_nul_bytes_and_ansi_codes(tmp_path):
    lines = [f"\x1b[32mStep {i + 1} | loss:{LOSS[i]:.4f} lr:{LR[i]:.2e} tokens_per_second_per_gpu:123\x1b[0m"
             for i in range(N)]
    raw = ("\n".join(lines[:30]) + "\n\x00\x00\x00" + "\n".join(lines[30:]) + "\n").encode()
    c = read_log(write(tmp_path / "log_1.txt", raw, "wb"))
    check(c, np.arange(1, N + 1), LOSS, np.array([float(f"{v:.2e}") for v in LR]))


def test_half_valid_half_garbage_reads_the_valid_part_and_says_where_it_stopped(tmp_path):
    lines = [f"step {i} | loss {LOSS[i]:.4f}" for i in range(N)]
    garbage = "Traceback (most recent call last):\n" + "".join(
        f'  File "/opt/conda/lib/python3.11/site-packages/torch/nn/modules/module{k}.py", line {100 + k}, in '
        f"_call_impl\n    return forward_call(*args, **kwargs)\n" for k in range(60)) + (
        "RuntimeError: CUDA error: an illegal memory access was encountered\n" * 3)
    c = read_log(write(tmp_path / "crash.log", "\n".join(lines) + "\n" + garbage))
    check(c, np.arange(N), LOSS)
    assert any(f"no records after line {N}" in n for n in c.meta["notes"])
    d = diagnose(c)
    assert any(f"no records after line {N}" in n for n in d.notes)  # the note reaches the user


def test_text_without_key_value_lines_is_a_clear_error(tmp_path):
    with pytest.raises(LrkitError, match="no log lrkit knows"):
        read_log(write(tmp_path / "notes.txt", "hello world\nthis is no log\n" * 20))


def test_text_log_streams_in_bounded_memory(monkeypatch):
    """Memory does not grow with the file: past MAX_VALUES values a series keeps means of consecutive values (the
    doctor reads at most 20,000 points anyway)."""
    import lrkit.doctor.textlog as textlog

    monkeypatch.setattr(textlog, "MAX_VALUES", 1000)
    pad = "x" * 900
    n = 100_000

    def lines():
        for i in range(n):
            yield f"step {i} | loss {float(i)} | {pad}\n"

    tracemalloc.start()
    log = parse(lines())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    loss = log.series["loss"]
    stride = log.strides["loss"]
    assert stride == 128 and 500 <= loss["value"].size <= 1000  # 100,000 values in means of 128
    k = loss["value"].size
    # each kept value is the mean of `stride` consecutive values, placed at the first one's step (closed form)
    np.testing.assert_allclose(loss["value"][: k - 1], np.arange(k - 1) * stride + (stride - 1) / 2)
    np.testing.assert_array_equal(loss["step"][: k - 1], np.arange(k - 1) * stride)
    assert peak < 5e6, f"peak {peak / 1e6:.1f} MB for {n * 0.93 / 1e3:.0f} MB of text"


def test_csv_step_restarting_each_epoch_is_made_cumulative(tmp_path):
    rows = ["epoch,step,loss,lr"]
    for e in range(4):
        for k in range(12):
            rows.append(f"{e},{k},{LOSS[e * 12 + k]},{LR[e * 12 + k]}")
    c = read_log(write(tmp_path / "log.csv", "\n".join(rows)))
    assert len(c) == 48
    np.testing.assert_array_equal(c.steps, np.arange(48))
    np.testing.assert_allclose(c.values, LOSS[:48])
    d = diagnose(c)
    assert any("restarts every epoch" in n for n in d.notes)


def test_jsonl_with_a_config_record_first(tmp_path):
    recs = [{"lr": 3e-4, "model": {"n_layer": 12}, "optimizer": "adamw"}]
    recs += [{"step": i, "train/loss": float(LOSS[i]), "train/lr": float(LR[i])} for i in range(N)]
    c = read_log(write(tmp_path / "metrics.jsonl", "\n".join(json.dumps(r) for r in recs)))
    check(c, np.arange(N), LOSS, LR)
    assert c.meta["lr_column"] == "train/lr" and c.meta["config"]["lr"] == 3e-4
    assert any("set aside" in n for n in c.meta["notes"])


def test_jsonl_with_broken_lines_reads_the_rest(tmp_path):
    recs = [json.dumps({"step": i, "loss": float(LOSS[i])}) for i in range(N)]
    recs[10] = recs[10][:-5]
    c = read_log(write(tmp_path / "m.jsonl", "\n".join(recs)))
    assert len(c) == N - 1 and any("line 11 not valid JSON" in n for n in c.meta["notes"])


def _mlflow_run(root, name, lr, values):
    run = root / name
    (run / "metrics").mkdir(parents=True)
    (run / "params").mkdir()
    (run / "meta.yaml").write_text(f"run_id: {name}\nrun_name: run-lr{lr}\nstatus: 3\n")
    (run / "params" / "learning_rate").write_text(str(lr))
    (run / "metrics" / "train_loss").write_text("".join(f"{1700000000000 + i} {v!r} {i}\n"
                                                        for i, v in enumerate(values)))
    return run


def test_mlflow_experiment_folder_and_mlruns_root(tmp_path):
    exp = tmp_path / "mlruns" / "1"
    exp.mkdir(parents=True)
    (exp / "meta.yaml").write_text("experiment_id: '1'\nname: sweep\n")
    _mlflow_run(exp, "a" * 32, 0.001, [float(v) for v in LOSS])
    c = read_log(exp)  # one run in an experiment folder
    check(c, np.arange(N), LOSS)
    assert c.meta["run"] == "run-lr0.001" and c.meta["config"]["lr"] == 0.001
    _mlflow_run(exp, "b" * 32, 0.1, [float(v) * 2 for v in LOSS])
    runs = read_runs(tmp_path / "mlruns")
    assert [r.meta["run"] for r in runs] == ["run-lr0.001", "run-lr0.1"]
    with pytest.raises(LrkitError, match="holds 2 runs"):
        read_log(exp)
    s = diagnose_runs([exp])
    assert s.names[s.best].endswith("run-lr0.001") and s.lrs == [0.001, 0.1]
    assert s.runs[1].recommendation.action == "lower" and s.runs[1].recommendation.factor == pytest.approx(0.01)


def test_csv_with_one_column_per_run(tmp_path):
    rows = ["Step,lr3e-4 - train/loss,lr3e-4 - train/loss__MIN,lr3e-4 - train/loss__MAX,lr1e-2 - train/loss"]
    rows += [f"{i},{LOSS[i]},{LOSS[i]},{LOSS[i]},{LOSS[i] * 1.5}" for i in range(N)]
    p = write(tmp_path / "wandb_export.csv", "\n".join(rows))
    runs = read_runs(p)
    assert [r.meta["run"] for r in runs] == ["lr3e-4", "lr1e-2"]
    assert [r.meta["config"]["lr"] for r in runs] == [3e-4, 1e-2]
    np.testing.assert_allclose(runs[1].values, LOSS * 1.5)
    assert all(r.lrs is None for r in runs)  # no run's loss column is taken for another run's lr
    c = read_log(p, metric="train/loss", run="lr1e-2")
    np.testing.assert_allclose(c.values, LOSS * 1.5)
    assert c.lrs is None


def test_pretty_printed_json_document_with_records_and_config(tmp_path):
    doc = {"run_info": {"train_config": {"optimizer_kwargs": {"lr": 0.001}, "lr_scheduler": "cosine"}},
           "train_info": {"metrics": [{"step": 100 * (i + 1), "train loss": float(LOSS[i]), "valid accuracy": 0.5}
                                      for i in range(N)]}}
    c = read_log(write(tmp_path / "result.json", json.dumps(doc, indent=2)))
    check(c, 100 * np.arange(1, N + 1), LOSS)
    assert c.name == "train loss" and c.meta["config"]["lr"] == 0.001 and c.meta["config"]["scheduler"] == "cosine"


@pytest.mark.parametrize("doc", [
    {"train_losses": LOSS.tolist(), "test_losses": (LOSS + 0.1).tolist(), "lr": 0.01},
    {"history": {"loss": LOSS.tolist(), "val_loss": (LOSS + 0.1).tolist(), "learning_rate": [0.01] * N}},
])
def test_json_of_per_epoch_lists(tmp_path, doc):
    c = read_log(write(tmp_path / "history.json", json.dumps(doc)))
    np.testing.assert_allclose(c.values, LOSS)
    np.testing.assert_array_equal(c.steps, np.arange(N))
    assert c.meta["eval_column"] in ("test_losses", "val_loss")
    np.testing.assert_allclose(c.extra[f"eval:{c.meta['eval_column']}"][1], LOSS + 0.1)
    assert read_log(write(tmp_path / "h2.json", json.dumps(doc)), metric=c.name).name == c.name


def test_csv_with_garbage_after_its_rows_reads_them_and_says_where_it_stopped(tmp_path):
    rows = ["step,loss"] + [f"{i},{LOSS[i]}" for i in range(N)]
    garbage = [f"Traceback (most recent call last): frame {k}" for k in range(150)]
    c = read_log(write(tmp_path / "log.csv", "\n".join(rows + garbage) + "\n"))
    check(c, np.arange(N), LOSS)
    assert any("no numeric rows from line 62 on: read the 60 rows before it" in n for n in c.meta["notes"])


def test_a_run_of_a_multi_run_source_from_the_cli(tmp_path, capsys):
    from lrkit.cli import main

    rows = ["Step,a - loss,b - loss"] + [f"{i},{LOSS[i]},{LOSS[i] * 2}" for i in range(N)]
    p = write(tmp_path / "export.csv", "\n".join(rows))
    assert main(["diagnose", p, "--run", "b", "--json", "--no-plot"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"] == "b" and out["metric"] == "loss"
    assert main(["diagnose", p, "--run", "c", "--no-plot"]) == 2
    assert "no run 'c'" in capsys.readouterr().err
    assert main(["diagnose", p, "--json", "--no-plot"]) == 0  # both runs: compared as one sweep
    out = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in out["runs"]] == ["a", "b"] and out["best"].endswith(":a")


def test_pytorch_word_language_model_example(tmp_path):
    lines = []
    k = 0
    for epoch in (1, 2, 3):
        for b in range(200, 3000, 200):
            lines.append(f"| epoch {epoch:3d} | {b:5d}/ 2983 batches | lr 20.00 | ms/batch 45.37 | loss {LOSS[k]:5.2f} | "
                         f"ppl {np.exp(LOSS[k]):8.2f}")
            k += 1
        lines.append("-" * 89)
        lines.append(f"| end of epoch {epoch:3d} | time: 12.34s | valid loss {5.5 - epoch / 10:5.2f} | valid ppl "
                     f"{np.exp(5.5 - epoch / 10):8.2f}")
        lines.append("-" * 89)
    c = read_log(write(tmp_path / "wlm.log", "\n".join(lines)))
    assert c.name == "loss" and c.meta["eval_column"] == "valid loss" and c.meta["lr_column"] == "lr"
    np.testing.assert_allclose(c.values, [float(f"{v:5.2f}") for v in LOSS[:k]])
    np.testing.assert_allclose(c.extra["eval:valid loss"][1], [5.4, 5.3, 5.2])


def test_cs230_style_metrics_lines_under_an_epoch_line(tmp_path):
    lines = []
    for e in range(10):
        lines.append(f"2019-01-01 12:00:{e:02d},123:INFO: Epoch {e + 1}/10")
        lines.append(f"2019-01-01 12:00:{e:02d},456:INFO: - Train metrics: accuracy: 0.{50 + e:02d} ; loss: {LOSS[e]:05.3f}")
        lines.append(f"2019-01-01 12:00:{e:02d},789:INFO: - Eval metrics : accuracy: 0.{40 + e:02d} ; loss: "
                     f"{LOSS[e] + 0.3:05.3f}")
    c = read_log(write(tmp_path / "train.log", "\n".join(lines)))
    assert c.name == "loss" and c.meta["eval_column"] == "eval/loss"
    np.testing.assert_array_equal(c.steps, np.arange(1, 11))
    np.testing.assert_allclose(c.values, [float(f"{v:05.3f}") for v in LOSS[:10]])


def test_loss_named_otherwise_or_only_a_perplexity(tmp_path):
    from lrkit.doctor.readers import pick_loss_column

    assert pick_loss_column(["step", "train_nll", "val_nll"]) == "train_nll"
    assert pick_loss_column(["epoch", "xent", "accuracy"]) == "xent"
    assert pick_loss_column(["accuracy", "lr", "precision"]) is None
    rows = ["step,train_ppl,val_ppl"] + [f"{i},{float(np.exp(LOSS[i]))!r},{float(np.exp(LOSS[i] + 0.1))!r}" for i in range(N)]
    c = read_log(write(tmp_path / "ppl.csv", "\n".join(rows)))
    assert c.name == "log(train_ppl)" and any("log of the perplexity" in n for n in c.meta["notes"])
    np.testing.assert_allclose(c.values, LOSS)


def test_runs_appended_to_one_log_read_the_last_and_a_resumed_run_keeps_the_rewritten_steps(tmp_path):
    aborted = [f"step {i} | loss {9.0 - i / 10:.4f}" for i in range(15)]  # a first run, stopped early
    full = [f"step {i} | loss {LOSS[i]:.4f}" for i in range(N)]
    c = read_log(write(tmp_path / "train.log", "\n".join(aborted + full)))
    check(c, np.arange(N), LOSS)
    assert any("starts over 1 time(s)" in n for n in c.meta["notes"])
    # resumed from step 40: steps 40..59 logged twice, the second time with the values that count
    resumed = full[:50] + [f"step {i} | loss {LOSS[i] + 1:.4f}" for i in range(40, N)]
    c = read_log(write(tmp_path / "resumed.log", "\n".join(resumed)))
    check(c, np.arange(N), np.r_[LOSS[:40], np.round(LOSS[40:] + 1, 4)])
    assert any("a resumed run" in n for n in c.meta["notes"])
