"""Log readers: every format round-trips what was written; bad input gives a clear LrkitError."""

import json
import os
import time

import numpy as np
import pytest

from lrkit.doctor import diagnose, read_log
from lrkit.doctor.readers import pick_loss_column
from lrkit.errors import LrkitError

RNG = np.random.default_rng(0)
LOSS = 0.3 + 2.0 * np.exp(-np.arange(300) / 40) + 0.02 * RNG.standard_normal(300)


def write_csv(path, header, rows, delim=","):
    with open(path, "w") as f:
        f.write(delim.join(header) + "\n")
        for r in rows:
            f.write(delim.join("" if v is None else str(v) for v in r) + "\n")
    return str(path)


def test_csv_roundtrip_picks_loss_and_lr(tmp_path):
    p = write_csv(tmp_path / "run.csv", ["step", "epoch", "val_loss", "train_loss", "lr", "grad_norm"],
                  [(i * 2, i // 100, 9.0, repr(float(v)), 1e-3, 1.0 + i) for i, v in enumerate(LOSS)])
    c = read_log(p)
    assert c.name == "train_loss" and c.meta["lr_column"] == "lr" and c.meta["format"] == "csv"
    np.testing.assert_array_equal(c.values, LOSS)
    np.testing.assert_array_equal(c.steps, np.arange(300) * 2)
    np.testing.assert_array_equal(c.lrs, 1e-3)
    np.testing.assert_array_equal(c.extra["grad_norm"], 1.0 + np.arange(300))
    assert read_log(p, metric="val_loss").name == "val_loss"


def test_update_ratio_column_is_read_and_reaches_the_shape_model(tmp_path):
    ur = 1e-3 * np.exp(-np.arange(300) / 200)
    p = write_csv(tmp_path / "run.csv", ["step", "loss", "grad_norm", "train/update_to_weight_ratio"],
                  [(i, repr(float(v)), 1.0, repr(float(u))) for i, (v, u) in enumerate(zip(LOSS, ur))])
    c = read_log(p)
    assert c.meta["update_ratio_column"] == "train/update_to_weight_ratio"
    np.testing.assert_array_equal(c.extra["update_ratio"], ur)
    d = diagnose(p)
    assert d.shape["variant"] == "with_ur"  # the variant that reads loss, grad norm and update ratio
    assert any("update/weight ratio" in n for n in d.notes)
    d = diagnose(write_csv(tmp_path / "no_ur.csv", ["step", "loss", "grad_norm"],
                           [(i, repr(float(v)), 1.0) for i, v in enumerate(LOSS)]))
    assert d.shape["variant"] == "with_gn" and not any("update/weight" in n for n in d.notes)


def test_gradient_alignment_column_is_read_and_reaches_the_shape_model(tmp_path):
    ur = 1e-3 * np.exp(-np.arange(300) / 200)
    al = 0.2 * np.cos(np.arange(300) / 30)
    rows = [(i, repr(float(v)), 1.0, repr(float(u)), repr(float(a))) for i, (v, u, a) in enumerate(zip(LOSS, ur, al))]
    c = read_log(write_csv(tmp_path / "run.csv", ["step", "loss", "grad_norm", "update_ratio", "grad_alignment"], rows))
    assert c.meta["grad_alignment_column"] == "grad_alignment"
    np.testing.assert_array_equal(c.extra["grad_alignment"], al)
    d = diagnose(c)
    assert d.shape["variant"] == "with_al" and any("gradient alignment" in n for n in d.notes)
    assert f"mean {al[-100:].mean():+.3f}, {np.mean(al[-100:] > 0):.0%} of the steps > 0" in "\n".join(d.notes)
    d = diagnose(write_csv(tmp_path / "no_gn.csv", ["step", "loss", "train/update_ratio", "train/grad_alignment"],
                           [(i, v, u, a) for i, v, _, u, a in rows]))
    assert d.shape["variant"] == "loss_ur_al"  # loss, update ratio and alignment
    # a column named like the alignment that is no cosine is not read, and the notes say why
    bad = read_log(write_csv(tmp_path / "bad.csv", ["step", "loss", "grad_alignment"],
                             [(i, v, repr(10.0 * float(a))) for i, v, _, _, a in rows]))
    assert "grad_alignment" not in bad.extra and bad.meta["grad_alignment_column"] is None
    assert any("'grad_alignment' is not a gradient alignment" in n and "reaches 2" in n for n in bad.meta["notes"])


def test_tsv_and_no_step_column(tmp_path):
    p = write_csv(tmp_path / "run.tsv", ["loss"], [(repr(float(v)),) for v in LOSS], delim="\t")
    c = read_log(p)
    np.testing.assert_array_equal(c.values, LOSS)
    assert np.array_equal(c.steps, np.arange(300)) and any("row number" in n for n in c.meta["notes"])


def test_sparse_rows_grouped_by_step_and_literal_nan_kept(tmp_path):
    rows = []
    for i, v in enumerate(LOSS[:100]):
        rows.append((i, 0, repr(float(v)), None))
        if i % 10 == 0:
            rows.append((i, 0, None, 0.1))  # a second, sparse row at the same step (lr logger)
    rows.append((100, 0, "nan", None))
    p = write_csv(tmp_path / "metrics.csv", ["step", "epoch", "train_loss_step", "lr-AdamW"], rows)
    c = read_log(p)
    assert c.name == "train_loss_step" and c.meta["lr_column"] == "lr-AdamW"
    assert len(c) == 101 and np.isnan(c.values[-1]) and np.array_equal(c.values[:100], LOSS[:100])
    assert np.all(c.lrs == 0.1)
    d = diagnose(p)
    assert d.verdict == "diverging" and d.findings[0].steps == [100]


def test_jsonl_and_json_list(tmp_path):
    recs = [{"_step": i, "train/loss": float(v), "train/learning_rate": 0.01, "note": "x"} for i, v in enumerate(LOSS)]
    p = tmp_path / "log.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    c = read_log(p)
    assert c.name == "train/loss" and c.meta["lr_column"] == "train/learning_rate"
    np.testing.assert_array_equal(c.values, LOSS)
    q = tmp_path / "log.json"
    q.write_text(json.dumps(recs))
    np.testing.assert_array_equal(read_log(q).values, LOSS)


def test_trainer_state_windowed_means(tmp_path):
    hist = [{"epoch": 0.1 * k, "grad_norm": 1.5, "learning_rate": 5e-5, "loss": round(float(v), 4), "step": 10 * k}
            for k, v in enumerate(LOSS[:50], 1)]
    hist.insert(20, {"epoch": 2.0, "eval_loss": 1.23, "step": 200})
    hist.append({"epoch": 5.0, "step": 500, "train_loss": 0.9, "train_runtime": 12.0})  # the summary row
    p = tmp_path / "trainer_state.json"
    p.write_text(json.dumps({"log_history": hist, "logging_steps": 10, "global_step": 500}))
    c = read_log(p)
    assert c.name == "loss" and c.meta["format"] == "transformers" and c.meta["window"] == 10
    np.testing.assert_array_equal(c.values, np.round(LOSS[:50], 4))
    np.testing.assert_array_equal(c.steps, 10 * np.arange(1, 51))
    assert "mean" in c.meta["semantics"]
    assert c.extra["eval:eval_loss"].tolist() == [[200.0], [1.23]]
    ckpt = tmp_path / "out" / "checkpoint-500"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(p.read_text())
    np.testing.assert_array_equal(read_log(tmp_path / "out").values, c.values)


def test_mlflow_run_folder(tmp_path):
    run = tmp_path / "mlruns" / "0" / "abc123"
    (run / "metrics" / "train").mkdir(parents=True)
    (run / "metrics" / "train" / "loss").write_text("".join(f"{1700000000000 + i} {float(v)!r} {i}\n"
                                                           for i, v in enumerate(LOSS)))
    (run / "metrics" / "lr").write_text("".join(f"{1700000000000 + i} 0.001 {i}\n" for i in range(300)))
    c = read_log(run)
    assert c.name == "train/loss" and c.meta["format"] == "mlflow" and c.meta["lr_column"] == "lr"
    np.testing.assert_array_equal(c.values, LOSS)


def test_tensorboard_all_points_and_tensor_summaries(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("torch", reason="the writer comes from torch")
    from torch.utils.tensorboard import SummaryWriter

    n = 12_000  # more than EventAccumulator's default reservoir of 10,000 scalars per tag
    w = SummaryWriter(str(tmp_path / "tb"))
    for i in range(n):
        w.add_scalar("train/loss", 2.0 / (1 + i / 100), i)
        if i % 100 == 0:
            w.add_scalar("train/lr", 1e-3 * (1 + i // 1000), i, new_style=True)  # a tensor summary (TF2 style)
    w.close()
    c = read_log(tmp_path / "tb")
    assert c.name == "train/loss" and len(c) == n and c.meta["format"] == "tensorboard"
    np.testing.assert_allclose(c.values, 2.0 / (1 + np.arange(n) / 100), rtol=1e-6)  # float32 in the file
    assert c.meta["lr_column"] == "train/lr"
    assert c.lrs[5050] == pytest.approx(6e-3)  # the last lr logged at or before step 5050 (step 5000)
    event_file = next((tmp_path / "tb").iterdir())
    assert len(read_log(event_file)) == n


def test_corrupt_event_file(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    good = tmp_path / "events.out.tfevents.1.host"
    good.write_bytes(b"\x18\x00\x00\x00\x00\x00\x00\x00garbage, not a TFRecord" * 20)
    with pytest.raises(LrkitError, match="no scalar summaries could be read"):
        read_log(good)


@pytest.mark.parametrize("content,match", [
    ("", "empty"),
    ("step,accuracy,lr\n1,0.5,0.1\n2,0.6,0.1\n", "no loss-like column found; columns: step, accuracy, lr"),
    ("step,loss\n", "no data rows"),
    ("step,loss\n1,np.float64(2.3)\n2,np.float64(2.1)\n", r"no loss-like column found \(no numbers in: loss; write "
     "plain numbers\\)"),
    ("1,2\n3,4\n", "not a header"),
    ('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": \n', "line 2 is not valid JSON"),
])
def test_bad_files(tmp_path, content, match):
    name = "log.jsonl" if content.startswith("{") else "log.csv"
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(LrkitError, match=match):
        read_log(p)


def test_missing_binary_unknown_folder_and_unknown_metric(tmp_path):
    with pytest.raises(LrkitError, match="no such file"):
        read_log(tmp_path / "nope.csv")
    (tmp_path / "model.bin").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(LrkitError, match="binary file"):
        read_log(tmp_path / "model.bin")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(LrkitError, match="no log lrkit knows"):
        read_log(tmp_path / "empty_dir")
    p = write_csv(tmp_path / "r.csv", ["step", "loss"], [(1, 0.5), (2, 0.4)])
    with pytest.raises(LrkitError, match="no column 'los'; columns: loss"):
        read_log(p, metric="los")


def test_pick_loss_column_prefers_train_step_values():
    assert pick_loss_column(["epoch", "val_loss", "train_loss_epoch", "train_loss_step"]) == "train_loss_step"
    assert pick_loss_column(["eval/loss", "train/total_loss"]) == "train/total_loss"
    assert pick_loss_column(["val_loss", "accuracy"]) is None


def test_ten_million_rows_streamed_fast(tmp_path):
    n_block, reps = 1_000_000, 10
    t = np.arange(n_block)
    block = np.c_[0.5 + np.exp(-t / 2e5), np.full(n_block, 3e-4)]
    p = tmp_path / "big.csv"
    with open(p, "w") as f:
        f.write("loss,lr\n")
        text = "\n".join(f"{a:.5f},{b:g}" for a, b in block.tolist()) + "\n"
        for _ in range(reps):  # 10 million rows (steps from the row number)
            f.write(text)
    t0 = time.process_time()
    c = read_log(p)
    d = diagnose(c)
    elapsed = time.process_time() - t0
    assert len(c) == n_block * reps and d.curve is not None and len(d.curve) <= 20_001
    assert elapsed < 10.0, f"reading and diagnosing 10M rows took {elapsed:.1f}s of CPU"
    assert os.path.getsize(p) > 100e6
