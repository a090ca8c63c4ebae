"""
Reliability guarantees, checked with real processes and signals: exact resume after SIGKILL,
crash-safe writes, safe loading, numerical faults, bad input, Ctrl-C, determinism.
"""

import errno
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from dataset import DataError, check_bins, download, read_meta
from model import CheckpointError, load_checkpoint, save_checkpoint
from test_train import TINY

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
ARGS = [*TINY, "--always_save_checkpoint=True"]


def python(*args, **kw):
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT, **kw)


def train_cmd(data, out_dir, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), *ARGS, f"--dataset={data}", f"--out_dir={out_dir}", *extra]


def run_until(cmd, marker, sig):
    """Start cmd, wait until a stdout line contains marker, then send sig. Returns (returncode, stdout, stderr)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=300)
    return proc.returncode, "".join(seen) + out, err


def step_log(out_dir):
    """(iter, loss) of every step line of log.jsonl, in order: a list, so a step logged twice shows."""
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [(r["iter"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def steps_run(stdout):
    """The steps a run itself trained, from its `iter N:` lines."""
    return [int(n) for n in re.findall(r"^iter (\d+):", stdout, re.M)]


# --- exact resume ---------------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_sigkill_after_checkpoint_then_resume_is_exact(tmp_path, shakespeare_char, objective):
    extra = [f"--objective={objective}", "--max_iters=16", "--eval_interval=8", "--dropout=0.1"]
    straight = python(*train_cmd(shakespeare_char, tmp_path / "straight", *extra)[1:])
    assert straight.returncode == 0, straight.stderr[-2000:]
    code, _, _ = run_until(train_cmd(shakespeare_char, tmp_path / "killed", *extra), "saved checkpoint", signal.SIGKILL)
    assert code == -signal.SIGKILL and load_checkpoint(str(tmp_path / "killed"))["iter_num"] == 8
    with open(tmp_path / "killed" / "log.jsonl", "a") as log:  # what a run killed later leaves: steps after its
        log.write("".join(json.dumps({"iter": i, "loss": 99.0}) + "\n" for i in (8, 9, 10)))  # checkpoint, and a
        log.write('{"iter": 11, "lo')  # torn last line
    resumed = python(*train_cmd(shakespeare_char, tmp_path / "killed", *extra, "--init_from=resume")[1:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert steps_run(resumed.stdout) == list(range(8, 16))  # it continued at step 8, it did not start over
    a, b = step_log(tmp_path / "straight"), step_log(tmp_path / "killed")
    assert [i for i, _ in b] == list(range(16))  # every step once: the stale lines were dropped
    assert [loss for _, loss in b] == pytest.approx([loss for _, loss in a], abs=1e-6)
    pa, pb = (load_checkpoint(str(tmp_path / d))["model"] for d in ("straight", "killed"))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_same_seed_same_loss_curve(tmp_path, shakespeare_char):
    for name in ("a", "b"):
        assert python(*train_cmd(shakespeare_char, tmp_path / name, "--max_iters=8", "--eval_interval=4", "--dropout=0.1")[1:]).returncode == 0
    assert step_log(tmp_path / "a") == step_log(tmp_path / "b")


# --- crash-safe writes ----------------------------------------------------------------------------

SAVE_FOREVER = """
import sys, torch
from model import save_checkpoint
i = 0
while True:
    i += 1
    save_checkpoint({"iter_num": i, "model": {"w": torch.full((256, 1024), float(i))}}, sys.argv[1], keep_last=3)
    print(i, flush=True)
"""


def test_sigkill_during_checkpoint_writes_never_leaves_a_torn_file(tmp_path):
    rng = random.Random(0)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one checkpoint exists
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.wait()
        ckpt = load_checkpoint(str(tmp_path))
        assert (ckpt["model"]["w"] == ckpt["iter_num"]).all()  # the old file or the new one, whole
        numbered = sorted(p for p in os.listdir(tmp_path) if p.startswith("ckpt-") and p.endswith(".pt"))
        assert 1 <= len(numbered) <= 3  # keep_last rotation holds at every instant, not only after a save ends


def test_keep_last_keeps_the_newest_and_resaving_an_iteration_drops_nothing_else(tmp_path):
    for i in (1, 2, 3, 4, 4):
        save_checkpoint({"iter_num": i, "model": {"w": torch.full((2,), float(i))}}, str(tmp_path), keep_last=3)
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("ckpt-")) == [f"ckpt-{i:07d}.pt" for i in (2, 3, 4)]
    assert load_checkpoint(str(tmp_path))["iter_num"] == 4


def test_sigkill_during_prepare_leaves_old_or_new_files(tmp_path, shakespeare_char):
    """Each output is the old file or the new one, whole; a kill between the renames leaves a mix
    that train.py refuses in one line, since meta.json (renamed last) no longer matches the bins."""
    def files(out):  # the bins' bytes and the token counts meta.json vouches for (none while the bins are renamed)
        meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else None
        return {**{f: (out / f).read_bytes() for f in ("train.bin", "val.bin")},
                "meta": meta and (meta["train_tokens"], meta["val_tokens"], meta["run_id"])}

    texts = {"old": "All the world's a stage, and all the men and women merely players.\n" * 200_000,
             "new": "Now is the winter of our discontent.\n" * 300_000}
    outputs = {}
    for version, text in texts.items():
        (tmp_path / f"{version}.txt").write_text(text)
        assert python("prepare.py", f"--input={tmp_path / version}.txt", f"--name={version}", f"--data_root={tmp_path}",
                      "--curate=False").returncode == 0
        outputs[version] = files(tmp_path / version)
    (tmp_path / "old.txt").write_text(texts["new"])
    rng = random.Random(1)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "prepare.py", f"--input={tmp_path / 'old.txt'}", "--name=old",
                                 f"--data_root={tmp_path}", "--curate=False"], env=ENV, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 3.0))  # reading, tokenizing, writing or renaming
        proc.kill()
        proc.wait()
        now = files(tmp_path / "old")
        assert all(now[f] in (outputs["old"][f], outputs["new"][f]) for f in now if now[f] is not None)
        run = python(*train_cmd(tmp_path / "old", tmp_path / "o", "--max_iters=0")[1:])
        mixed = now not in outputs.values()  # the kill can land between any two renames
        assert (run.returncode != 0 and "interrupted prepare.py run" in run.stderr) if mixed else run.returncode == 0


def test_disk_full_while_writing_bins_is_a_clean_error(tmp_path):
    src = tmp_path / "text.txt"
    src.write_text("to be or not to be " * 50_000)
    args = [f"--input={src}", "--name=full", f"--data_root={tmp_path}", "--curate=False"]
    assert python("prepare.py", *args).returncode == 0
    before = (tmp_path / "full" / "train.bin").read_bytes()

    def small_disk():  # the kernel refuses writes past 100 kB, as a full disk would
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    run = python("prepare.py", *args, preexec_fn=small_disk)
    assert run.returncode == 1 and "free some disk space" in run.stderr and "Traceback" not in run.stderr
    assert (tmp_path / "full" / "train.bin").read_bytes() == before
    assert not [p for p in os.listdir(tmp_path / "full") if ".tmp" in p]


def test_disk_full_after_the_bins_are_written_is_a_clean_error(tmp_path, monkeypatch):
    """The bins fit, meta.json does not: one line, and train.py refuses the folder (no meta.json vouches for
    the new bins) instead of reading them with the old one."""
    import prepare
    src = tmp_path / "text.txt"
    src.write_text("to be or not to be " * 5_000)
    args = [f"--input={src}", "--name=full", f"--data_root={tmp_path}", "--curate=False"]
    prepare.main(args)
    fsync = os.fsync

    def meta_json_does_not_fit(fd):
        if "meta.json" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", meta_json_does_not_fit)
    src.write_text("all the world's a stage " * 5_000)
    with pytest.raises(SystemExit, match=r"^prepare.py: could not write .*meta.json \(No space left on device\); free some disk space"):
        prepare.main(args)
    monkeypatch.undo()
    assert "interrupted prepare.py run" in one_line_error(python(*train_cmd(tmp_path / "full", tmp_path / "o")[1:]))


def test_bins_and_meta_of_different_runs_with_equal_counts_are_refused(tmp_path):
    """Same length, same characters, other text: equal token counts. The run id in meta.json tells them apart."""
    import prepare
    for name, text in (("a", "abcd\n" * 40_000), ("b", "dcba\n" * 40_000)):
        (tmp_path / f"{name}.txt").write_text(text)
        prepare.main([f"--input={tmp_path / name}.txt", f"--name={name}", f"--data_root={tmp_path}", "--curate=False"])
    meta = {n: read_meta(str(tmp_path / n)) for n in "ab"}
    assert meta["a"]["train_tokens"] == meta["b"]["train_tokens"] and meta["a"]["run_id"] != meta["b"]["run_id"]
    check_bins(str(tmp_path / "a"), meta["a"])
    shutil.copy(tmp_path / "b" / "train.bin", tmp_path / "a" / "train.bin")
    with pytest.raises(DataError, match="not the ones its meta.json was written with"):
        check_bins(str(tmp_path / "a"), meta["a"])


# --- safe loading ---------------------------------------------------------------------------------

class Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": Exploit(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="refusing to load.*could run code"):
        load_checkpoint(str(tmp_path))
    run = python("sample.py", f"--out_dir={tmp_path}")
    assert run.returncode == 1 and "refusing to load" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists()


def test_truncated_checkpoint_names_the_last_good_one(tmp_path, shakespeare_char):
    out = tmp_path / "out"
    assert python(*train_cmd(shakespeare_char, out, "--max_iters=4", "--eval_interval=2", "--keep_last=2")[1:]).returncode == 0
    path = out / "ckpt.pt"
    good = sorted(p for p in os.listdir(out) if p.startswith("ckpt-"))
    path.unlink()  # ckpt.pt is a hard link of the newest numbered file: break only ckpt.pt
    (out / "ckpt.pt").write_bytes((out / good[-1]).read_bytes()[:5000])
    run = python(*train_cmd(shakespeare_char, out, "--max_iters=6", "--eval_interval=2", "--init_from=resume")[1:])
    assert run.returncode == 1 and "Traceback" not in run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert "ckpt.pt is truncated or corrupt" in line and f"last good checkpoint is {out / good[-1]}" in line


# --- numerical faults -----------------------------------------------------------------------------

# learning_rate=1e5 makes the loss NaN within a few steps with AdamW on every parameter; under Muon it
# would reach only the embeddings, norms and head (the matrices take muon_lr)
BLOW_UP = ["--optimizer=adamw"]


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, shakespeare_char):
    out = tmp_path / "out"
    first = python(*train_cmd(shakespeare_char, out, "--max_iters=4", "--eval_interval=4", *BLOW_UP)[1:])
    assert first.returncode == 0
    good = out.joinpath("ckpt.pt").read_bytes()
    run = python(*train_cmd(shakespeare_char, out, "--init_from=resume", "--max_iters=30", "--eval_interval=100",
                            "--learning_rate=1e5", "--grad_clip=0", "--decay_lr=False", *BLOW_UP)[1:])
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "at step" in run.stderr and f"last good checkpoint is {out / 'ckpt.pt'}" in run.stderr
    assert out.joinpath("ckpt.pt").read_bytes() == good


def test_nan_skip_counts_skipped_steps(tmp_path, shakespeare_char):
    run = python(*train_cmd(shakespeare_char, tmp_path, "--max_iters=12", "--eval_interval=100", "--learning_rate=1e5",
                            "--grad_clip=0", "--decay_lr=False", "--nan_policy=skip", *BLOW_UP)[1:])
    assert run.returncode == 0, run.stderr[-2000:]
    skipped = [json.loads(line) for line in open(tmp_path / "log.jsonl") if '"skipped"' in line]
    assert len(skipped) >= 1 and load_checkpoint(str(tmp_path))["counters"]["skipped_steps"] == len(skipped)


def test_fp16_overflow_is_handled_by_the_grad_scaler(tmp_path, shakespeare_char):
    run = python(*train_cmd(shakespeare_char, tmp_path, "--dtype=float16", "--max_iters=6", "--eval_interval=6", "--init_loss_scale=1e30")[1:])
    assert run.returncode == 0, run.stderr[-2000:]
    # a loss scaled by 1e30 overflows float16 gradients: GradScaler skips the step and halves the scale, logged
    assert "step 0: fp16 gradient overflow, step skipped by GradScaler, loss scale -> 5e+29" in run.stdout
    assert load_checkpoint(str(tmp_path))["counters"]["fp16_overflows"] >= 1


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, shakespeare_char, sig, status):
    """SIGTERM is what Slurm and Kubernetes send before they kill a job: it must not lose the steps since the last eval."""
    code, out, err = run_until(train_cmd(shakespeare_char, tmp_path, "--max_iters=100000", "--eval_interval=100000"), "iter 3:", sig)
    assert code == status and "Traceback" not in err
    assert "interrupted at step" in out and "--init_from=resume" in out
    step = load_checkpoint(str(tmp_path))["iter_num"]
    assert step >= 4 and f"interrupted at step {step} ({sig.name})" in out
    resumed = python(*train_cmd(shakespeare_char, tmp_path, "--init_from=resume", f"--max_iters={step + 2}")[1:])
    assert resumed.returncode == 0 and steps_run(resumed.stdout) == [step, step + 1]


# --- runs that must not clobber each other ------------------------------------------------------

def test_a_second_run_on_a_busy_out_dir_refuses(tmp_path, shakespeare_char):
    first = subprocess.Popen(train_cmd(shakespeare_char, tmp_path, "--max_iters=100000", "--eval_interval=100000"), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if "iter 1:" in line:
                break
        second = python(*train_cmd(shakespeare_char, tmp_path, "--max_iters=2", "--overwrite=True")[1:])
        assert f"is in use by another run (pid {first.pid} on " in one_line_error(second)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=300)
    assert first.returncode == 130  # the first run never noticed, and saved its checkpoint as usual
    assert python(*train_cmd(shakespeare_char, tmp_path, "--init_from=resume", "--max_iters=1")[1:]).returncode == 0  # lock gone


def test_a_new_run_does_not_replace_a_checkpoint_unless_told(tmp_path, shakespeare_char):
    assert python(*train_cmd(shakespeare_char, tmp_path, "--max_iters=6", "--eval_interval=3", "--keep_last=2")[1:]).returncode == 0
    before = (tmp_path / "ckpt.pt").read_bytes()
    line = one_line_error(python(*train_cmd(shakespeare_char, tmp_path, "--max_iters=2", "--eval_interval=2")[1:]))
    assert "already holds a checkpoint" in line and "--init_from=resume" in line and "--overwrite=True" in line
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    run = python(*train_cmd(shakespeare_char, tmp_path, "--max_iters=2", "--eval_interval=2", "--overwrite=True")[1:])
    assert run.returncode == 0, run.stderr[-2000:]
    assert load_checkpoint(str(tmp_path))["iter_num"] == 2 and not list(tmp_path.glob("ckpt-*.pt"))  # the old run's are gone
    assert [i for i, _ in step_log(tmp_path)] == [0, 1]  # and so is its log


def test_resume_continues_with_the_checkpoints_own_settings(tmp_path, shakespeare_char):
    """Resumed with nothing but out_dir and a new max_iters, the run keeps its learning rate and batch size
    instead of taking today's defaults (config/shakespeare_char.py: 1e-3 and 64)."""
    first = python(*train_cmd(shakespeare_char, tmp_path, "--max_iters=4", "--eval_interval=4", "--batch_size=4",
                              "--learning_rate=1e-4", "--decay_lr=False")[1:])
    assert first.returncode == 0, first.stderr[-2000:]
    run = python("train.py", f"--out_dir={tmp_path}", "--init_from=resume", "--max_iters=6", "--threads=1")
    assert run.returncode == 0, run.stderr[-2000:]
    taken = next(line for line in run.stdout.splitlines() if line.startswith("resume: settings from the checkpoint"))
    assert "learning_rate=0.0001" in taken and "batch_size=4" in taken and f"dataset='{shakespeare_char}'" in taken
    assert "resume: changed on the command line: max_iters 4 -> 6" in run.stdout
    assert steps_run(run.stdout) == [4, 5]
    assert [r["lr"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if "loss" in r] == [1e-4] * 6
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt["iter_num"] == 6 and ckpt["config"]["batch_size"] == 4
    line = one_line_error(python("train.py", f"--out_dir={tmp_path}", "--init_from=resume", "--n_layer=3"))
    assert "n_layer=3 but the run in" in line and "a resumed run keeps its architecture" in line


def test_read_only_out_dir_is_a_one_line_error(shakespeare_char):
    # sysfs refuses new files to everyone, root included: a folder no run can write in, on any Linux machine
    line = one_line_error(python(*train_cmd(shakespeare_char, "/sys", "--max_iters=2")[1:]))
    assert re.fullmatch(r"train.py: cannot write in out_dir=/sys \((Permission denied|Operation not permitted)\); "
                        r"choose another --out_dir", line)


# --- bad input --------------------------------------------------------------------------------------

def one_line_error(run):
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    return run.stderr.strip().splitlines()[-1]


def test_bad_config_values_are_one_line_errors(tmp_path, shakespeare_char):
    assert "did you mean batch_size" in one_line_error(python(*train_cmd(shakespeare_char, tmp_path, "--batchsize=4")[1:]))
    assert "batch_size=0 must be at least 1" in one_line_error(python(*train_cmd(shakespeare_char, tmp_path, "--batch_size=0")[1:]))
    assert "expects int" in one_line_error(python(*train_cmd(shakespeare_char, tmp_path, "--n_layer=two")[1:]))


def test_missing_dataset_and_block_size_larger_than_data(tmp_path, shakespeare_char):
    assert "prepare the dataset first" in one_line_error(python(*train_cmd(tmp_path / "nothing", tmp_path / "o")[1:]))
    small = tmp_path / "small.txt"
    small.write_text("a tiny corpus of a few words only " * 3)
    assert python("prepare.py", f"--input={small}", "--name=small", f"--data_root={tmp_path}", "--curate=False").returncode == 0
    line = one_line_error(python(*train_cmd(tmp_path / "small", tmp_path / "o", "--block_size=64")[1:]))
    assert "fewer than block_size" in line and "lower block_size" in line


def test_vocab_mismatch_between_data_and_checkpoint(tmp_path, shakespeare_char):
    assert python(*train_cmd(shakespeare_char, tmp_path, "--max_iters=2", "--eval_interval=2")[1:]).returncode == 0
    other = tmp_path / "other.txt"
    other.write_text("completely different characters: 0123456789 ∑∂ " * 100)
    assert python("prepare.py", f"--input={other}", "--name=other", f"--data_root={tmp_path}", "--curate=False").returncode == 0
    line = one_line_error(python(*train_cmd(tmp_path / "other", tmp_path, "--init_from=resume", "--max_iters=4")[1:]))
    assert "does not match the checkpoint" in line


def test_url_that_times_out(tmp_path):
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        with pytest.raises(DataError, match="could not download.*after 2 tries"):
            download(f"http://127.0.0.1:{silent.getsockname()[1]}/x.txt", str(tmp_path / "x.txt"),
                             retries=1, timeout=0.5, progress=False)
    finally:
        silent.close()
