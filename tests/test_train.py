import json
import math
import re

import numpy as np
import pytest
import torch

import train
from conftest import assert_real_png
from model import load_checkpoint

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--eval_iters=2",
        "--max_time=0", "--device=cpu", "--dtype=float32", "--log_interval=1", "--warmup_iters=5",
        "--learning_rate=3e-3", "--sample_tokens=20", "--threads=1"]


def run(out_dir, data, *extra):
    train.main([*TINY, f"--dataset={data}", f"--out_dir={out_dir}", *extra])
    return read_log(out_dir)


def read_log(out_dir):
    with open(f"{out_dir}/log.jsonl") as f:
        return [json.loads(line) for line in f]


def test_tiny_run_lowers_loss(tmp_path, shakespeare_char, capsys):
    log = run(tmp_path, shakespeare_char, "--max_iters=60", "--eval_interval=30")
    evals = [r for r in log if "val_loss" in r]
    assert evals[0]["val_loss"] > math.log(60) and evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.8
    assert_real_png(tmp_path / "loss.png")
    out = capsys.readouterr().out
    assert "-" * 40 in out  # a sample is printed at the end
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt["iter_num"] == 60 and ckpt["config"]["max_iters"] == 60
    assert not any("_orig_mod" in k or k.startswith("module.") for k in ckpt["model"])
    assert ckpt["tokenizer"]["kind"] == "char"


def test_resume_continues_same_loss(tmp_path, shakespeare_char, capsys):
    args = ["--eval_interval=10", "--always_save_checkpoint=True", "--dropout=0.1"]
    full = run(tmp_path / "full", shakespeare_char, "--max_iters=20", *args)
    run(tmp_path / "half", shakespeare_char, "--max_iters=10", *args)
    ckpt = load_checkpoint(str(tmp_path / "half"))
    assert ckpt["iter_num"] == 10 and ckpt["optimizer"]["state"]  # Adam moments are saved
    capsys.readouterr()
    resumed = run(tmp_path / "half", shakespeare_char, "--max_iters=20", "--init_from=resume", *args)
    # the resumed run trained steps 10-19 itself (a fresh start would log the same losses: training is deterministic)
    assert [int(n) for n in re.findall(r"^iter (\d+):", capsys.readouterr().out, re.M)] == list(range(10, 20))
    steps = lambda log: [(r["iter"], r["loss"]) for r in log if "loss" in r]  # noqa: E731  a list: no step twice
    assert [i for i, _ in steps(resumed)] == list(range(20))
    assert [loss for _, loss in steps(resumed)] == pytest.approx([loss for _, loss in steps(full)], abs=1e-6)
    a, b = load_checkpoint(str(tmp_path / "full"))["model"], load_checkpoint(str(tmp_path / "half"))["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_masking_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 60, (64, 512))
    x[:, ::50] = 65  # specials sprinkled in
    masked, labels = train.mask_tokens(x, {65, 66, 67, 68, 69}, 65, 66, 0.15, g)
    chosen = labels != -100
    normal = x != 65
    assert abs(chosen.sum().item() / normal.sum().item() - 0.15) < 0.005
    assert not chosen[~normal].any()  # special tokens are never chosen
    assert torch.equal(labels[chosen], x[chosen]) and (labels[~chosen] == -100).all()
    to_mask = (masked == 66) & chosen
    kept = (masked == x) & chosen
    n = chosen.sum().item()
    assert abs(to_mask.sum().item() / n - 0.8) < 0.01
    assert abs(kept.sum().item() / n - (0.1 + 0.1 / 65)) < 0.01  # 10% kept, plus random picks of the same id
    assert torch.equal(masked[~chosen], x[~chosen])
    assert (masked[chosen & (masked != 66)] < 65).all()  # random replacements are ordinary tokens


def test_mlm_run_lowers_masked_loss(tmp_path, shakespeare_char, capsys):
    log = run(tmp_path, shakespeare_char, "--objective=mlm", "--max_iters=60", "--eval_interval=30")
    evals = [r for r in log if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.8
    assert evals[-1]["val_mlm_acc"] > 3 / 65 and evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    assert load_checkpoint(str(tmp_path))["model_args"]["causal"] is False
    assert "filled:" in capsys.readouterr().out


def test_lr_schedule():
    cfg = train.configure(train.DEFAULTS, ["--learning_rate=1.0", "--min_lr=0.1", "--warmup_iters=10", "--lr_decay_iters=110"], verbose=False)
    assert train.get_lr(0, cfg) > 0 and train.get_lr(9, cfg) < 1.0 and train.get_lr(10, cfg) == 1.0
    assert train.get_lr(60, cfg) == pytest.approx(0.55) and train.get_lr(500, cfg) == 0.1


def test_batches_are_a_function_of_their_index():
    data = np.arange(1000, dtype=np.uint16)
    a = train.get_batch(data, 4, 8, train.batch_generator(1, "train", 7))
    b = train.get_batch(data, 4, 8, train.batch_generator(1, "train", 7))
    c = train.get_batch(data, 4, 8, train.batch_generator(1, "train", 8))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0]) and torch.equal(a[1], a[0] + 1)


def test_eval_only_writes_no_checkpoint(tmp_path, shakespeare_char):
    log = run(tmp_path, shakespeare_char, "--eval_only=True", "--max_iters=100")
    assert len(log) == 1 and "val_loss" in log[0] and not (tmp_path / "ckpt.pt").exists()


def test_bf16_autocast_on_cpu_trains(tmp_path, shakespeare_char):
    log = run(tmp_path, shakespeare_char, "--dtype=bfloat16", "--max_iters=30", "--eval_interval=30")
    evals = [r for r in log if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5


def test_compiled_checkpoint_has_plain_names(tmp_path, shakespeare_char):
    run(tmp_path, shakespeare_char, "--compile=True", "--max_iters=2", "--eval_interval=2", "--n_layer=1")
    assert not any("_orig_mod" in k for k in load_checkpoint(str(tmp_path))["model"])


def test_mlm_baselines_score_the_same_positions(tmp_path, shakespeare_char, capsys):
    run(tmp_path / "clm", shakespeare_char, "--max_iters=30", "--eval_interval=30")
    run(tmp_path / "mlm", shakespeare_char, "--objective=mlm", "--max_iters=30", "--eval_interval=30")
    capsys.readouterr()
    run(tmp_path / "mlm", shakespeare_char, "--objective=mlm", "--init_from=resume", "--eval_only=True", "--eval_iters=20",
        f"--mlm_baselines={tmp_path / 'clm'}")
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("masked-token accuracy")][0]
    scores = {k: float(v) for k, v in (item.split() for item in line.split(": ", 1)[1].split(", "))}
    assert set(scores) == {"mlm_acc", "clm_left_context_acc", "most_frequent_acc"}
    # the most frequent character (space) is right about one time in six in Shakespeare
    assert 0.1 < scores["most_frequent_acc"] < 0.25 and all(0 <= v <= 1 for v in scores.values())
