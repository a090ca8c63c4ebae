"""The README's quick start, run as a user would on a fresh clone (with a tiny max_iters)."""

import os
import shutil
import subprocess
import sys

from conftest import ROOT

REPO_FILES = ["configurator.py", "dataset.py", "tokenizer.py", "spans.py", "model.py", "optim.py", "dedup.py", "curate.py", "safety.py", "report.py", "prepare.py", "rundir.py", "train.py", "sample.py", "config", "data/tinyshakespeare", "data/gpt2_bpe", "data/roots"]


def test_quickstart_prepares_trains_and_samples(tmp_path):
    clone = tmp_path / "clone"
    for name in REPO_FILES:
        src, dst = os.path.join(ROOT, name), clone / name
        shutil.copytree(src, dst) if os.path.isdir(src) else (dst.parent.mkdir(parents=True, exist_ok=True), shutil.copy(src, dst))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "train.py", "--max_iters=20", "--eval_interval=10", "--eval_iters=2", "--n_layer=1",
                          "--sample_tokens=40"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "preparing it first" in run.stdout and (clone / "data" / "shakespeare_char" / "train.bin").exists()
    assert "step 20:" in run.stdout and run.stdout.rstrip().endswith("-" * 40)  # ends with a printed sample
    assert (clone / "out-shakespeare-char" / "ckpt.pt").exists() and (clone / "out-shakespeare-char" / "loss.png").exists()
    run = subprocess.run([sys.executable, "sample.py", "--num_samples=2", "--max_new_tokens=20", "--start=ROMEO:"],
                         cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("ROMEO:") == 2
