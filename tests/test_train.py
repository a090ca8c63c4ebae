import functools
import json
import math
import os
import re

import numpy as np
import pytest
import torch

import finetune
import train
from conftest import assert_real_png
from dataset import BinWriter, commit_shards, read_bin, read_meta, write_meta
from model import load_checkpoint
from tokenizer import load_tokenizer

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--eval_iters=2",
        "--max_time=0", "--device=cpu", "--dtype=float32", "--log_interval=1", "--warmup_iters=5",
        "--learning_rate=3e-3", "--sample_tokens=20", "--threads=1"]


def run(out_dir, data, *extra):
    train.main([*TINY, f"--dataset={data}", f"--out_dir={out_dir}", *extra])
    return read_log(out_dir)


def read_log(out_dir):
    with open(f"{out_dir}/log.jsonl") as f:
        return [json.loads(line) for line in f]


def test_loss_png_is_drawn_once_at_the_end_of_a_short_run(tmp_path, shakespeare_char, monkeypatch):
    drawn = []
    monkeypatch.setattr(train, "plot_training", lambda out_dir, log_scale: drawn.append(read_log(out_dir)[-1]["iter"]))
    run(tmp_path, shakespeare_char, "--max_iters=40", "--eval_interval=10", "--sample_tokens=0")
    assert drawn == [40]  # the evals at 0, 10, 20 and 30 come within PLOT_EVERY_S of the start


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


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_continues_same_loss(tmp_path, shakespeare_char, capsys, optimizer):
    args = ["--eval_interval=10", "--always_save_checkpoint=True", "--dropout=0.1", f"--optimizer={optimizer}"]
    full = run(tmp_path / "full", shakespeare_char, "--max_iters=20", *args)
    run(tmp_path / "half", shakespeare_char, "--max_iters=10", *args)
    ckpt = load_checkpoint(str(tmp_path / "half"))
    assert ckpt["iter_num"] == 10 and ckpt["optimizer"]["state"]  # Adam moments (and Muon's momentum) are saved
    buffers = {k for k, v in ckpt["optimizer"]["state"].items() if "momentum_buffer" in v}
    assert buffers == ({k for k in ckpt["model"] if ".h." in k and ckpt["model"][k].dim() == 2} if optimizer == "muon" else set())
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


def reshard(src, dst, cuts):
    """A copy of the prepared dataset `src` in shards, as prepare.py's ranks write them: each split cut at the
    fractions `cuts` of its length."""
    meta, tok = read_meta(src), load_tokenizer(src)
    listed, pieces = {"train": [], "val": []}, {}
    os.makedirs(dst)
    for split in listed:
        tokens = read_bin(src, split, meta)
        edges = [0, *(int(c * len(tokens)) for c in cuts), len(tokens)]
        pieces[split] = [tokens[a:b] for a, b in zip(edges, edges[1:])]
    for k in range(len(cuts) + 1):
        writer = BinWriter(str(dst), tok.vocab_size, shard=k, run_id="copy")
        for split in listed:
            writer.write(split, pieces[split][k])
        for split, entry in writer.close().items():
            listed[split].append(entry)
    commit_shards(str(dst), listed, "copy")
    counts = {f"{s}_tokens": sum(e["tokens"] for e in listed[s]) for s in listed}
    write_meta(str(dst), tok, counts | {"dtype": meta["dtype"], "run_id": "copy", "shards": listed}, "copy", {})
    return str(dst)


def test_train_and_finetune_read_shards_as_the_one_file_they_were_cut_from(tmp_path, shakespeare_char):
    sharded = reshard(shakespeare_char, tmp_path / "sharded", [0.1, 0.1004, 0.6])  # one shard of ~400 tokens
    losses = lambda log: [(r["iter"], r["loss"]) for r in log if "loss" in r]  # noqa: E731
    one = run(tmp_path / "one", shakespeare_char, "--max_iters=8", "--eval_interval=4")
    assert losses(run(tmp_path / "shards", sharded, "--max_iters=8", "--eval_interval=4")) == losses(one)
    tuned = []
    for data in (shakespeare_char, sharded):
        out = tmp_path / f"lm-{len(tuned)}"
        finetune.main(["--task=lm", f"--init_from={tmp_path / 'one'}", f"--dataset={data}", f"--out_dir={out}",
                       "--max_iters=4", "--eval_interval=2", "--log_interval=1", "--batch_size=4", "--block_size=32", "--device=cpu",
                       "--dtype=float32", "--threads=1", "--eval_iters=2"])
        tuned.append([(r["iter"], r.get("loss"), r.get("val_loss")) for r in read_log(out)])
    assert tuned[0] == tuned[1] and len(tuned[0]) >= 6


LM_LOSS = train.lm_loss


class FakeClock:
    """Seconds that pass only when a training micro-step runs: one each."""

    def __init__(self, monkeypatch, interrupt_at=None):
        self.now, self.interrupt_at = 1000.0, interrupt_at

        def timed_loss(*args):
            if self.interrupt_at is not None and self.now - 1000.0 >= self.interrupt_at:
                raise KeyboardInterrupt  # as Ctrl-C would: the trainer saves and exits
            self.now += 1.0
            return LM_LOSS(*args)
        monkeypatch.setattr(train, "lm_loss", timed_loss)
        monkeypatch.setattr(train, "Trainer", functools.partial(train.Trainer, clock=self))

    def __call__(self):
        return self.now


BUDGET = ["--max_time=20", "--max_iters=1000", "--lr_decay_iters=1000", "--warmup_iters=100", "--eval_interval=8",
          "--always_save_checkpoint=True", "--min_lr=3e-4"]


def test_time_budget_completes_the_schedule(tmp_path, shakespeare_char, monkeypatch, capsys):
    FakeClock(monkeypatch)
    log = run(tmp_path, shakespeare_char, *BUDGET)
    steps, evals = [r for r in log if "loss" in r], [r for r in log if "val_loss" in r]
    # step i starts after i seconds of the 20: the schedule is at i/20 of max_iters, far ahead of i/1000
    assert [r["iter"] for r in steps] == list(range(20))
    assert [r["progress"] for r in steps] == pytest.approx([i / 20 for i in range(20)])
    cfg = train.configure(train.DEFAULTS, TINY + BUDGET, verbose=False)
    assert [r["lr"] for r in steps] == pytest.approx([train.get_lr(i / 20 * 1000, cfg) for i in range(20)])
    assert steps[1]["lr"] < 3e-3 and steps[2]["lr"] == pytest.approx(3e-3, rel=0.01)  # warmup: the first 10% of the time
    # the budget is spent after step 19: one final eval at min_lr, and a checkpoint
    assert [r["iter"] for r in evals] == [0, 8, 16, 20] and evals[-1]["progress"] == 1.0 and evals[-1]["lr"] == 3e-4
    assert evals[-1]["time"] == 20.0 and "max_time=20s reached at step 20" in capsys.readouterr().out
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt["iter_num"] == 20 and ckpt["counters"]["train_time"] == 20.0


def test_time_capped_run_resumes_on_the_same_schedule(tmp_path, shakespeare_char, monkeypatch):
    FakeClock(monkeypatch)
    full = run(tmp_path / "full", shakespeare_char, *BUDGET)
    FakeClock(monkeypatch, interrupt_at=11)  # Ctrl-C after 11 of the 20 seconds
    with pytest.raises(SystemExit):
        run(tmp_path / "half", shakespeare_char, *BUDGET)
    assert load_checkpoint(str(tmp_path / "half"))["counters"]["train_time"] == 11.0
    FakeClock(monkeypatch)
    resumed = run(tmp_path / "half", shakespeare_char, *BUDGET, "--init_from=resume")
    steps = lambda log, key: {r["iter"]: r[key] for r in log if "loss" in r}  # noqa: E731
    for key in ("loss", "lr", "progress"):
        assert steps(resumed, key) == pytest.approx(steps(full, key), abs=1e-6) and max(steps(resumed, key)) == 19
