"""
The out_dir of a training run, which train.py and finetune.py share: one run at a time (an exclusive lock
that the kernel releases when the process dies), no new run silently replacing an old one's checkpoints,
and log.jsonl (appended per step and eval, read tolerantly, truncated to the checkpoint on resume) with
the loss.png drawn from it.
"""

import fcntl
import glob
import json
import os
import socket

from configurator import ConfigError
from dataset import atomic_write_text


def lock_out_dir(out_dir):
    """An exclusive lock on out_dir/.lock, held until teardown (the kernel drops it when the process dies, even
    by SIGKILL, so it never goes stale): two runs never write one out_dir. Returns the open lock file."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        f = open(os.path.join(out_dir, ".lock"), "a+", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write in out_dir={out_dir} ({e.strerror}); choose another --out_dir") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(f"out_dir={out_dir} is in use by another run ({holder}); wait for it to end, "
                          f"or choose another --out_dir") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    return f


def start_fresh(cfg):
    """A run from step 0: refused over a checkpoint already in out_dir unless overwrite=True, which deletes the
    old checkpoints; the log starts empty."""
    old = [p for p in [os.path.join(cfg.out_dir, "ckpt.pt"), *glob.glob(os.path.join(cfg.out_dir, "ckpt-*.pt"))] if os.path.exists(p)]
    if old and not cfg.overwrite:
        raise ConfigError(f"{cfg.out_dir} already holds a checkpoint ({os.path.basename(old[0])}) that a new run would replace: "
                          f"continue it with --init_from=resume, start over with --overwrite=True, or choose another --out_dir")
    for path in old:
        os.remove(path)
    truncate_log(cfg.out_dir, 0)


# -----------------------------------------------------------------------------
# log.jsonl and loss.png

def append_log(out_dir, record):
    with open(os.path.join(out_dir, "log.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_log(out_dir):
    """(records of log.jsonl in order, number of lines that do not parse). A run killed while appending
    leaves a torn last line; it is not a reason to refuse the rest."""
    path = os.path.join(out_dir, "log.jsonl")
    records, torn = [], 0
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in filter(str.strip, f):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    torn += 1
    return [r for r in records if isinstance(r, dict)], torn


def truncate_log(out_dir, iter_num):
    """On resume: forget log lines a crashed run wrote after its last checkpoint, and unreadable ones."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        return
    records, torn = read_log(out_dir)
    if torn:
        print(f"note: dropped {torn} unreadable line(s) of {path} (a run killed while writing it)")
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records if r.get("iter", 0) < iter_num))


# train.py redraws loss.png at an eval at most this often, and always at the last one: drawing it costs ~0.8 s
# (matplotlib), a tenth of a 300-step run of nanoGPT's baby config when done at every eval
PLOT_EVERY_S = 60.0


def plot_training(out_dir, log_scale=False):
    """loss.png from log.jsonl: loss vs step and vs tokens, learning rate on a second axis, and
    accuracy curves when the log has them. Drawn only at eval time (see PLOT_EVERY_S)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records, _ = read_log(out_dir)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    acc_keys = sorted({k for r in evals for k in r if k.startswith("val_") and k.endswith(("acc", "f1"))})
    fig, axes = plt.subplots(1, 3 if acc_keys else 2, figsize=(15 if acc_keys else 11, 4))
    for ax, x in zip(axes, ("iter", "tokens")):
        ax.plot([r[x] for r in steps if x in r], [r["loss"] for r in steps if x in r], lw=0.8, alpha=0.6, label="train (step)")
        ax.plot([r[x] for r in evals if x in r], [r["train_loss"] for r in evals if x in r], "o-", label="train (eval)")
        ax.plot([r[x] for r in evals if x in r], [r["val_loss"] for r in evals if x in r], "o-", label="val")
        ax.set_xlabel("step" if x == "iter" else "tokens")
        ax.set_ylabel("loss")
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        lr_ax = ax.twinx()
        lr_ax.plot([r[x] for r in steps if x in r], [r["lr"] for r in steps if x in r], color="gray", lw=0.8, ls="--")
        lr_ax.set_ylabel("learning rate", color="gray")
    if acc_keys:
        for key in acc_keys:
            axes[2].plot([r["iter"] for r in evals if key in r], [r[key] for r in evals if key in r], "o-", label=key)
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("accuracy / F1")
        axes[2].grid(alpha=0.3)
        axes[2].legend()
    fig.suptitle(os.path.basename(os.path.abspath(out_dir)))
    fig.tight_layout()
    tmp = os.path.join(out_dir, "loss.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, os.path.join(out_dir, "loss.png"))
