"""train.py under torchrun with 2 CPU processes (Gloo): DDP and FSDP against a single process."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT
from model import load_checkpoint
from test_train import TINY

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
ARGS = [a for a in TINY if not a.startswith("--threads")] + ["--dropout=0.0", "--always_save_checkpoint=True"]


def descendants(pid):
    """Every process below pid, read from /proc (Linux)."""
    parent = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):  # not a process, or one that ended while we read
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, pp in parent.items() if pp in frontier]
        found += children
        frontier = children
    return found


def launch(nproc, *args, script="train.py", timeout=300):
    """Run a script in nproc processes; on a hang, every process first prints its Python stacks (faulthandler via a
    sitecustomize on PYTHONPATH), then the whole process group is killed so no rank lingers into later tests."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    with tempfile.TemporaryDirectory() as hooks:
        with open(os.path.join(hooks, "sitecustomize.py"), "w") as f:
            f.write(f"import faulthandler\nfaulthandler.dump_traceback_later({timeout - 30}, exit=False)\n")
        env = dict(ENV, PYTHONPATH=os.pathsep.join([hooks, ROOT]))
        proc = subprocess.Popen(cmd + [os.path.join(ROOT, script), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun starts its workers in sessions of their own
                os.kill(pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{script} hung for {timeout} s; stdout:\n{stdout[-2000:]}\nstderr (stacks):\n{stderr[-8000:]}")
    assert proc.returncode == 0, stdout[-1500:] + stderr[-3000:]
    return stdout


def losses(out_dir):
    """(iter, loss) of each step line, in order."""
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [(r["iter"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def max_relative_difference(a, b):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)).item() for k in a)


def test_ddp_equals_one_process_with_the_same_global_batch(tmp_path, shakespeare_char):
    # AdamW: Muon's bfloat16 Newton-Schulz turns last-bit differences of the summed gradients (DDP sums in
    # another order) into visible weight differences in the first, nearly low-rank updates (measured: losses
    # equal to 1e-5, matrices apart by up to 15% after 6 steps), so only AdamW shows the exactness checked here
    common = [*ARGS, f"--dataset={shakespeare_char}", "--max_iters=6", "--eval_interval=6", "--gradient_accumulation_steps=4",
              "--optimizer=adamw"]
    launch(1, *common, f"--out_dir={tmp_path / 'one'}")
    out = launch(2, *common, f"--out_dir={tmp_path / 'ddp'}")
    assert "2 processes" in out
    one, ddp = (load_checkpoint(str(tmp_path / d))["model"] for d in ("one", "ddp"))
    assert max_relative_difference(ddp, one) < 1e-5  # DDP averages gradients exactly as accumulation does
    assert dict(losses(tmp_path / "ddp")) == pytest.approx(dict(losses(tmp_path / "one")), rel=1e-5)


def test_fsdp_checkpoint_loads_in_one_process(tmp_path, shakespeare_char):
    common = [*ARGS, f"--dataset={shakespeare_char}", "--max_iters=6", "--eval_interval=6", "--gradient_accumulation_steps=2",
              "--optimizer=adamw"]  # Muon needs whole matrices: train.py refuses it with FSDP
    launch(2, *common, "--fsdp=True", f"--out_dir={tmp_path / 'fsdp'}")
    launch(1, *common, f"--out_dir={tmp_path / 'one'}")
    assert max_relative_difference(load_checkpoint(str(tmp_path / "fsdp"))["model"],
                                   load_checkpoint(str(tmp_path / "one"))["model"]) < 1e-5
    out = launch(1, f"--out_dir={tmp_path / 'fsdp'}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=10", script="sample.py")
    assert out.startswith("ROMEO:") and len(out) > 12
    # and the other way round: a single-process checkpoint resumes under FSDP
    launch(2, *[a for a in common if not a.startswith("--max_iters")], "--max_iters=8", "--fsdp=True",
           "--init_from=resume", f"--out_dir={tmp_path / 'one'}")
    assert load_checkpoint(str(tmp_path / "one"))["iter_num"] == 8


def test_resume_under_ddp_with_dropout_is_exact(tmp_path, shakespeare_char):
    """With dropout each rank draws its own masks: the resumed ranks must each get their own RNG state back,
    or the losses after step 4 part from the straight run's."""
    common = [*ARGS, f"--dataset={shakespeare_char}", "--eval_interval=4", "--gradient_accumulation_steps=2", "--dropout=0.1"]
    launch(2, *common, "--max_iters=8", f"--out_dir={tmp_path / 'straight'}")
    launch(2, *common, "--max_iters=4", f"--out_dir={tmp_path / 'resumed'}")
    out = launch(2, *common, "--max_iters=8", "--init_from=resume", f"--out_dir={tmp_path / 'resumed'}")
    assert "resuming from" in out and "at step 4" in out
    assert re.findall(r"^iter (\d+):", out, re.M) == ["4", "5", "6", "7"]
    resumed, straight = losses(tmp_path / "resumed"), losses(tmp_path / "straight")
    assert [i for i, _ in resumed] == list(range(8))
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], abs=1e-6)


EVAL_ON_EACH_RANK = """
import json, os, sys, torch
import train
from dataset import read_meta
from tokenizer import load_tokenizer
cfg = train.configure(train.DEFAULTS, sys.argv[1:], verbose=False)
system = train.setup_system(cfg)
meta, tok = read_meta(cfg.dataset), load_tokenizer(cfg.dataset)
torch.manual_seed(0)
model, _, _ = train.start_model(cfg, tok)
metrics = train.evaluate_lm(model, train.make_batch_fn(cfg, cfg.dataset, meta, tok, system), cfg, system)
with open(os.path.join(cfg.out_dir, f"rank{system.rank}.json"), "w") as f:
    json.dump(metrics, f)
train.teardown(system)
"""


def test_eval_is_averaged_over_ranks_and_identical_on_each(tmp_path, shakespeare_char):
    script = tmp_path / "eval_each_rank.py"
    script.write_text(EVAL_ON_EACH_RANK)
    launch(2, *ARGS, f"--dataset={shakespeare_char}", f"--out_dir={tmp_path}", "--eval_iters=3", script=str(script))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and r0["val_loss"] > 0


def test_accumulation_must_divide_among_ranks(tmp_path, shakespeare_char):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(ROOT, "train.py"),
           *ARGS, f"--dataset={shakespeare_char}", f"--out_dir={tmp_path}", "--gradient_accumulation_steps=3"]
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "must be divisible by the number of processes (2)" in run.stderr


SKEWED_CLOCKS = """
import functools, json, os, sys
import train
# rank 0's clock runs one second per micro-step, rank 1's 1.05 (a slower or busier machine): left to their own
# clocks, the ranks would reach max_time at different steps (one stopping while the other waits in a collective)
# and decay the learning rate differently
rank, now = int(os.environ["RANK"]), [0.0]
loss = train.lm_loss
def timed_loss(*args):
    now[0] += 1.0 + 0.05 * rank
    return loss(*args)
train.lm_loss = timed_loss
lrs = []
class Recorded(train.Trainer):
    def apply_step(self, it):
        lrs.append(self.run.optimizer.param_groups[0]["lr"])
        return super().apply_step(it)
train.Trainer = functools.partial(Recorded, clock=lambda: now[0])
train.main(sys.argv[1:])
with open(os.path.join(sys.argv[-1].split("=", 1)[1], f"lrs{rank}.json"), "w") as f:
    json.dump(lrs, f)
"""


def test_a_time_budget_under_ddp_runs_on_one_clock(tmp_path, shakespeare_char):
    script = tmp_path / "skewed_clocks.py"
    script.write_text(SKEWED_CLOCKS)
    launch(2, *[a for a in ARGS if a != "--max_time=0"], f"--dataset={shakespeare_char}", "--max_time=10.2",
           "--max_iters=1000", "--eval_interval=4", "--gradient_accumulation_steps=2", f"--out_dir={tmp_path}",
           script=str(script), timeout=120)
    lrs0, lrs1 = (json.loads((tmp_path / f"lrs{r}.json").read_text()) for r in (0, 1))
    assert lrs0 == lrs1 and 9 <= len(lrs0) <= 12  # both ranks took the same steps at the same learning rates
    assert load_checkpoint(str(tmp_path))["iter_num"] == len(lrs0)
