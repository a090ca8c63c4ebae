"""
Pretraining on a prepared dataset: a GPT (objective='clm', next-token prediction), a BERT-style encoder
(objective='mlm', masked tokens) or a T5-style encoder-decoder (objective='span', span corruption).

    python train.py                                   # config/shakespeare_char.py, ~2 minutes on a CPU
    python train.py config/mlm_shakespeare_char.py
    python train.py config/span_shakespeare_char.py
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2.py
    python train.py --init_from=resume --out_dir=out-shakespeare-char

Under torchrun every rank trains on its own batches and DDP averages the gradients (FSDP shards the model when
fsdp=True). Checkpoints hold what an exact continuation needs: weights, optimizer, loss scaler, RNG states and the
data position. finetune.py reuses the system setup, model start and loop (Trainer); sample.py the setup.
"""

import contextlib
import importlib.util
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import ConfigError, NanorootsError, configure, script_main
from dataset import check_bins, dataset_dir, read_bin, read_meta, stable_hash
from hf import load_pretrained
from model import GPTConfig, build_model, checkpoint_tokenizer, clean_state_dict, load_checkpoint, model_from_checkpoint, save_checkpoint
from optim import get_lr, make_optimizer, schedule_step
from prepare import RECIPES, prepare_recipe
from rundir import PLOT_EVERY_S, append_log, lock_out_dir, plot_training, start_fresh, truncate_log
from safety import SafeGeneration
from spans import corrupt_spans, restore_spans, span_lengths
from tokenizer import BERT_SPECIALS, EOT, SENTINELS, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULTS = dict(
    # I/O
    out_dir="out",
    eval_interval=2000,
    log_interval=1,
    eval_iters=200,
    eval_only=False,              # evaluate the initial/loaded model and exit
    always_save_checkpoint=True,  # else only when val loss improves
    init_from="scratch",          # scratch | resume | gpt2[-medium|-large|-xl] | a checkpoint, out_dir or Hugging Face folder
    overwrite=False,              # a new run may replace the checkpoints already in out_dir (else it refuses to start)
    keep_last=1,                  # numbered checkpoints to keep besides ckpt.pt
    sample_every=0,               # print a short sample every this many iters (0 = only at the end)
    sample_tokens=300,            # length of the samples printed during and after training
    safe=False,                   # samples never hold ROOTS' flagged words, personal data redacted (safety.py)
    safe_phone=False,             # with safe: redact phone numbers too
    plot_log_scale=False,         # loss.png with a log-scale loss axis
    wandb_log=False,              # also log to Weights & Biases (pip install wandb)
    wandb_project="nanoroots",
    # data
    dataset="openwebtext",        # data/<dataset>/ written by prepare.py
    gradient_accumulation_steps=40,  # global: divided among the ranks under torchrun
    batch_size=12,                # sequences per micro-step per rank
    block_size=1024,
    # model (see model.GPTConfig)
    n_layer=12,
    n_head=12,
    n_kv_head=0,
    n_embd=768,
    dropout=0.0,
    bias=False,
    pos="learned",
    rope_theta=10000.0,
    norm="layernorm",
    norm_eps=1e-5,
    mlp="gelu",
    mlp_hidden=0,
    qk_norm=False,                # RMS-normalise queries and keys per head (not exportable to Hugging Face)
    tie_embeddings=True,
    mlm_transform=False,
    n_decoder_layer=0,            # span: the decoder's blocks (0 = n_layer, as in T5); the encoder has n_layer
    # objective
    objective="clm",              # clm (GPT) | mlm (BERT-style masked LM) | span (T5's span corruption, encoder-decoder)
    mask_prob=0.15,               # mlm: share of tokens chosen for prediction (BERT); 80% [MASK], 10% random, 10% kept;
                                  # span: share of tokens dropped in spans (T5: 15%)
    mean_span=3.0,                # span: mean length of a dropped span (T5: 3)
    mlm_baselines="",             # mlm with eval_only: also score a CLM checkpoint (this out_dir) and the most
                                  # frequent token at the same masked positions
    # optimizer: AdamW, or Muon for the Transformer blocks' matrices with AdamW for the rest
    optimizer="adamw",            # adamw | muon
    muon_lr=0.02,                 # muon: the matrices' peak learning rate (nanochat's matrix_lr); learning_rate is AdamW's
    muon_momentum=0.95,           # muon: Nesterov momentum (Jordan et al. 2024; modded-nanogpt, nanochat)
    learning_rate=6e-4,
    max_iters=600000,
    weight_decay=1e-1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,                # 0 = no clipping
    # learning rate schedule: linear warmup, cosine decay to min_lr. With max_time > 0 it runs on whichever is
    # further along, steps (of max_iters) or time (of max_time), so warmup and decay end when the budget does
    decay_lr=True,
    warmup_iters=2000,
    lr_decay_iters=600000,
    min_lr=6e-5,
    # system
    device="auto",                # auto | cpu | cuda | cuda:N | mps
    dtype="auto",                 # auto | float32 | bfloat16 | float16
    compile=False,                # torch.compile the model
    backend="auto",               # distributed backend: auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    fsdp=False,                   # shard parameters, gradients and optimizer state with FSDP instead of DDP
    grad_checkpoint=False,        # recompute activations in backward: less memory, ~30% more compute
    seed=1337,
    max_time=0.0,                 # seconds of training (evals included) before stopping cleanly; 0 = no limit.
                                  # Time-capped runs differ across machines (and loads); step-capped runs reproduce
    nan_policy="stop",            # stop | skip: what a NaN/inf loss does
    patience=0,                   # stop when val loss has not improved for this many evals (0 = never)
    init_loss_scale=65536.0,      # float16: GradScaler's starting loss scale (halved at each overflow)
    threads=0,                    # CPU threads per process (0 = torch's default)
)

MODEL_KEYS = ["block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "dropout", "bias", "pos",
              "rope_theta", "norm", "norm_eps", "mlp", "mlp_hidden", "qk_norm", "tie_embeddings", "mlm_transform",
              "n_decoder_layer"]


class TrainError(NanorootsError):
    """A run that cannot go on (a NaN loss, a resume that does not fit); the message says what to do."""


# -----------------------------------------------------------------------------
# system: device, precision, processes

def setup_system(cfg):
    """Device, dtype, autocast context and process group for this rank (a namespace)."""
    s = type("System", (), {})()
    s.rank = int(os.environ.get("RANK", 0))
    s.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    s.world_size = int(os.environ.get("WORLD_SIZE", 1))
    s.distributed = "RANK" in os.environ and s.world_size > 1
    s.master = s.rank == 0
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if cfg.device == "cuda" and s.distributed:
        cfg.device = f"cuda:{s.local_rank}"
    s.device, s.device_type = cfg.device, cfg.device.split(":")[0]
    check_device(cfg.device)
    if s.device_type == "cuda":
        torch.cuda.set_device(s.device)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for float32 matmuls: ~8x on Ampere+, 10-bit mantissa
        torch.backends.cudnn.allow_tf32 = True
    if cfg.dtype == "auto":  # measured on CPUs without AMX, bf16 matmuls are slower than float32: keep float32
        cfg.dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if s.device_type == "cuda" else "float32"
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype={cfg.dtype!r} is not one of auto, float32, bfloat16, float16")
    s.dtype = cfg.dtype
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    s.autocast = (contextlib.nullcontext() if cfg.dtype == "float32"
                  else torch.amp.autocast(device_type=s.device_type, dtype=ptdtype))
    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    elif s.distributed and s.device_type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", s.world_size))))
    if s.distributed and not dist.is_initialized():
        backend = cfg.backend if getattr(cfg, "backend", "auto") != "auto" else ("nccl" if s.device_type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
    return s


def check_device(device):
    """A device this machine has, or a one-line error (torch's own is a traceback deep inside set_device)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise ConfigError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but this machine (or this PyTorch build) has no CUDA GPU; use --device=auto or cpu")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA GPUs")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' but Apple's Metal backend is not available here; use --device=auto or cpu")


def teardown(system):
    if getattr(system, "out_dir_lock", None) is not None:  # closing the file releases the lock
        system.out_dir_lock.close()
        system.out_dir_lock = None
    if system.distributed and dist.is_initialized():
        if getattr(system, "done", False):  # ended well: shut down together (a rank in gloo's shutdown after
            dist.barrier()                  # the other had gone hung 2-rank runs at exit, under load)
        dist.destroy_process_group()


def all_reduce_mean(values, system):
    """Average a list of floats over the ranks (identity in one process)."""
    if not system.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=system.device if system.device_type == "cuda" else "cpu")
    dist.all_reduce(t)
    return (t / system.world_size).tolist()


def wrap_model(model, cfg, system):
    """The model to call: compiled then wrapped in DDP (torch.compile's DDPOptimizer splits the
    graph at DDP's bucket boundaries), or sharded with FSDP per block and at the root, then compiled."""
    getattr(model, "gpt", model).grad_checkpoint = cfg.grad_checkpoint  # a finetuning Classifier holds its GPT
    if cfg.fsdp:
        if not system.distributed:
            raise ConfigError("fsdp=True needs several processes: launch with torchrun --nproc_per_node=N")
        if cfg.dtype == "float16":
            raise ConfigError("fsdp=True with float16 needs a sharded loss scaler; use dtype=bfloat16")
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # see dcp_state_dict
        half = {"bfloat16": torch.bfloat16}.get(cfg.dtype)
        mp = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32) if half else MixedPrecisionPolicy()
        for block in [*model.transformer.h, *(model.decoder.h if hasattr(model, "decoder") else [])]:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return torch.compile(model) if cfg.compile else model
    if cfg.compile:
        model = torch.compile(model)
    if system.distributed:
        model = DDP(model, device_ids=[system.local_rank] if system.device_type == "cuda" else None)
    return model


def gradient_sync(model, sync):
    """DDP/FSDP all-reduce gradients only on the last micro-step of an accumulation."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    elif hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def dcp_state_dict():
    """torch.distributed.checkpoint's state-dict functions, imported when first used: with FSDP they pull
    in DTensor, a third of this file's import time (measured with python -X importtime), which sample.py
    and bench.py, importing this file, do not need."""
    import torch.distributed.checkpoint.state_dict as dcp_sd
    return dcp_sd


def full_state(model, optimizer, system):
    """Unsharded model and optimizer state dicts (collective under FSDP; every rank must call)."""
    dcp_sd = dcp_state_dict()
    opts = dcp_sd.StateDictOptions(full_state_dict=True, cpu_offload=system.distributed)
    model_sd, optim_sd = dcp_sd.get_state_dict(model, getattr(optimizer, "optimizers", optimizer), options=opts)
    return clean_state_dict(model_sd), optim_sd


def unsharded(raw_model, system):
    """The model as one plain module for generation: itself, or under FSDP a copy built from the
    gathered full state dict (collective; the copy is only complete on rank 0)."""
    if not hasattr(raw_model, "set_requires_gradient_sync"):
        return raw_model
    dcp_sd = dcp_state_dict()
    state = dcp_sd.get_model_state_dict(raw_model, options=dcp_sd.StateDictOptions(full_state_dict=True, cpu_offload=True))
    plain = build_model(GPTConfig.from_dict(asdict(raw_model.config)))
    if system.master:
        plain.load_state_dict(clean_state_dict(state))
    return plain.to(system.device)


def load_full_state(model, optimizer, model_sd, optim_sd):
    """Load unsharded state dicts into a (possibly sharded) model and its optimizer."""
    dcp_sd = dcp_state_dict()
    dcp_sd.set_state_dict(model, getattr(optimizer, "optimizers", optimizer), model_state_dict=model_sd,
                          optim_state_dict=optim_sd, options=dcp_sd.StateDictOptions(full_state_dict=True))


def rng_state():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_generator(*key):
    """A torch.Generator seeded from a key such as (seed, "train", batch index): batches are a pure
    function of their index, so resume and any number of ranks see exactly the same data."""
    return torch.Generator().manual_seed(stable_hash(*key) % 2**63)


# -----------------------------------------------------------------------------
# data

def find_dataset(dataset, system):
    """data/<dataset>/ (or the folder `dataset`), prepared first when it is a built-in recipe that has not
    been run yet; then the bins are checked against meta.json."""
    data_dir = dataset_dir(dataset)
    if not os.path.exists(os.path.join(data_dir, "meta.json")) and dataset in RECIPES:
        if system.master:
            print(f"data/{dataset} is missing: preparing it first")
            prepare_recipe(dataset)
        if dist.is_initialized():
            dist.barrier()
    return data_dir


def get_batch(data, batch_size, block_size, generator, shift=True):
    """batch_size random windows of the token stream: x (B, T) and the next tokens y (B, T)."""
    ix = torch.randint(len(data) - block_size - int(shift) + 1, (batch_size,), generator=generator)
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix.tolist()])
    if not shift:
        return x, None
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix.tolist()])
    return x, y


def mask_tokens(x, special_ids, n_normal, mask_id, mask_prob, generator):
    """
    BERT/RoBERTa dynamic masking of x (B, T): choose mask_prob of the non-special positions; of
    those 80% become [MASK], 10% a random ordinary token and 10% stay. Labels are the original ids
    at chosen positions and -100 elsewhere.
    """
    special = torch.isin(x, torch.tensor(sorted(special_ids), dtype=x.dtype))
    chosen = (torch.rand(x.shape, generator=generator) < mask_prob) & ~special
    labels = torch.where(chosen, x, torch.full_like(x, -100))
    r = torch.rand(x.shape, generator=generator)
    random_ids = torch.randint(n_normal, x.shape, generator=generator, dtype=x.dtype)
    x = torch.where(chosen & (r < 0.8), torch.full_like(x, mask_id), x)
    x = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, x)
    return x, labels


def to_device(tensors, system):
    if system.device_type == "cuda":  # pinned host memory lets the copy overlap with compute
        return [t.pin_memory().to(system.device, non_blocking=True) for t in tensors]
    return [t.to(system.device) for t in tensors]


def make_batch_fn(cfg, data_dir, meta, tok, system, split="train"):
    """batch(index) -> (x, y) on the device for micro-batch number `index` of `split`."""
    special = set(tok.special_ids.values())
    n_normal = min(special)  # ordinary tokens come first, the specials are appended after them
    span = span_lengths(cfg.block_size, cfg.mask_prob, cfg.mean_span) if cfg.objective == "span" else None

    def batch(index, split=split, kind="train"):
        g = batch_generator(cfg.seed, kind, split, index)
        data = read_bin(data_dir, split, meta)
        if cfg.objective == "clm":
            return to_device(get_batch(data, cfg.batch_size, cfg.block_size, g), system)
        if cfg.objective == "span":  # (input, decoder input, target)
            x, _ = get_batch(data, cfg.batch_size, span.window, g, shift=False)
            return to_device(corrupt_spans(x, span, list(tok.sentinel_ids.values()), tok.special_ids[EOT], g), system)
        x, _ = get_batch(data, cfg.batch_size, cfg.block_size, g, shift=False)
        return to_device(mask_tokens(x, special, n_normal, tok.special_ids["[MASK]"], cfg.mask_prob, g), system)

    return batch


def lm_loss(model, batch, autocast):
    with autocast:  # (x, y), or for span (input, decoder input, target)
        _, loss = model(*batch)
    return loss


@torch.no_grad()
def evaluate_lm(model, batch_fn, cfg, system, n_normal=0):
    """Mean loss (and masked-token accuracy for mlm; for span, the accuracy on the spans' own tokens, ids
    below n_normal, not the sentinels) on eval_iters fixed batches per split, averaged over the ranks,
    which each evaluate their own share."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses, correct, total = [], 0, 0
        for k in range(cfg.eval_iters):
            batch = batch_fn(k * system.world_size + system.rank, split=split, kind="eval")
            y = batch[-1]
            with system.autocast:
                logits, loss = model(*batch)
            losses.append(loss.item())
            if cfg.objective == "mlm":
                target = y[y != -100]
                correct += (logits.argmax(-1) == target).sum().item()
                total += target.numel()
            elif cfg.objective == "span":
                in_span = y < n_normal
                correct += (logits.argmax(-1)[in_span] == y[in_span]).sum().item()
                total += in_span.sum().item()
        mean_loss, acc = all_reduce_mean([sum(losses) / len(losses), correct / max(total, 1)], system)
        out[f"{split}_loss"] = mean_loss
        if cfg.objective in ("mlm", "span"):
            out[f"{split}_{cfg.objective}_acc"] = acc
    out["val_ppl"] = math.exp(min(out["val_loss"], 50))  # for mlm this is the pseudo-perplexity
    model.train()
    return out


@torch.no_grad()
def mlm_baselines(model, batch_fn, cfg, data_dir, meta, system):
    """Masked-token accuracy of the encoder next to two baselines at the very same val positions: always guessing
    the most frequent training token, and a causal LM that sees only the tokens to the left of the mask (so
    position 0, which has no left context, is left out for all three)."""
    clm = load_checkpoint(cfg.mlm_baselines)
    clm_model = model_from_checkpoint(clm, system.device).eval()
    if clm_model.config.block_size < cfg.block_size or clm.get("tokenizer") != load_tokenizer(data_dir).spec():
        raise ConfigError(f"{cfg.mlm_baselines} must use this dataset's tokenizer and a block_size of at least {cfg.block_size}")
    most_frequent = int(np.bincount(read_bin(data_dir, "train", meta), minlength=meta["vocab_size"]).argmax())
    model.eval()
    hits, total = np.zeros(3), 0
    for k in range(cfg.eval_iters):
        x, labels = batch_fn(k, split="val", kind="eval")
        original = torch.where(labels != -100, labels, x)
        labels[:, 0] = -100  # no left context there
        chosen = labels != -100
        with system.autocast:
            mlm_logits = model(x)[0]
            clm_logits = clm_model(original)[0]
        left_context_guess = torch.roll(clm_logits.argmax(-1), 1, dims=1)  # logits at i-1 predict token i
        hits += [(mlm_logits.argmax(-1)[chosen] == labels[chosen]).sum().item(),
                 (left_context_guess[chosen] == labels[chosen]).sum().item(),
                 (labels[chosen] == most_frequent).sum().item()]
        total += chosen.sum().item()
    model.train()
    return {"mlm_acc": hits[0] / total, "clm_left_context_acc": hits[1] / total,
            "most_frequent_acc": hits[2] / total, "positions": total}


# -----------------------------------------------------------------------------
# the model and the run's state: a new model, a pretrained one, or the run being resumed

def new_model(cfg, vocab_size, causal=True, seq2seq=False, **overrides):
    """A freshly initialised model with the run's architecture keys (MODEL_KEYS): a GPT (`causal`), an
    encoder, or with seq2seq an encoder-decoder, whose vocabulary adds the sentinels after vocab_size."""
    args = {k: getattr(cfg, k) for k in MODEL_KEYS} | {"vocab_size": vocab_size, "causal": causal} | overrides
    if seq2seq:
        args |= {"causal": False, "n_decoder_layer": args["n_decoder_layer"] or args["n_layer"],
                 "vocab_size": vocab_size + len(SENTINELS)}
    return build_model(GPTConfig.from_dict(args))


def start_model(cfg, tok=None, causal=True, checkpoint=None, seq2seq=False):
    """
    (model, tokenizer, checkpoint or None) for cfg.init_from: a new model (scratch, `causal` or an encoder),
    the run in out_dir (resume), or whatever hf.load_pretrained reads (a checkpoint, an out_dir, a Hugging
    Face folder, a GPT-2 name). A pretrained model keeps its architecture; this run sets its dropout (as
    nanoGPT does when it starts from GPT-2), and a smaller block_size crops its context. `tok` is the data's
    tokenizer, checked against the checkpoint's; without it, the checkpoint's own is used. `checkpoint`:
    the one resume_config already loaded. seq2seq: the model is, or must be, an encoder-decoder.
    """
    if cfg.init_from == "scratch":
        return new_model(cfg, tok.vocab_size, causal, seq2seq), tok, None
    resume = cfg.init_from == "resume"
    if checkpoint is None:
        checkpoint = load_checkpoint(cfg.out_dir) if resume else load_pretrained(cfg.init_from)
    spec = checkpoint.get("tokenizer")
    if tok is not None and spec is not None and spec != tok.spec():
        raise ConfigError(f"dataset {cfg.dataset} uses a {tok.kind} tokenizer with {tok.vocab_size} tokens, which does not "
                          f"match the checkpoint's ({spec['kind']}); prepare the data with the checkpoint's tokenizer")
    tok = tok or checkpoint_tokenizer(checkpoint, cfg.init_from)
    if checkpoint["model_args"]["vocab_size"] < tok.vocab_size:
        raise ConfigError(f"dataset {cfg.dataset} has {tok.vocab_size} token ids but {cfg.init_from} embeds only "
                          f"{checkpoint['model_args']['vocab_size']}; prepare the data with the model's tokenizer")
    if not resume:
        checkpoint["model_args"] = {**checkpoint["model_args"], "dropout": cfg.dropout}
    model = model_from_checkpoint(checkpoint)
    if seq2seq != bool(model.config.n_decoder_layer):
        raise ConfigError(f"{cfg.init_from} is an encoder-decoder, which trains with objective=span or task=seq2seq only"
                          if model.config.n_decoder_layer else f"{cfg.init_from} is not an encoder-decoder, which objective=span "
                          f"and task=seq2seq need: start from one (train.py --objective=span makes one) or from scratch")
    if 0 < cfg.block_size < model.config.block_size and not resume:
        model.crop_block_size(cfg.block_size)
    elif cfg.block_size > model.config.block_size:
        raise ConfigError(f"block_size={cfg.block_size} is larger than the checkpoint's {model.config.block_size}")
    return model, tok, checkpoint


# the settings of this machine and this invocation, which a resumed run does not take from its checkpoint
MACHINE_KEYS = ("out_dir", "init_from", "overwrite", "eval_only", "device", "dtype", "backend", "compile", "threads")


def resume_config(cfg, explicit, system):
    """
    init_from=resume continues the run in out_dir with the settings it was started with: every key comes from
    the checkpoint's config except this machine's (MACHINE_KEYS) and those the command line sets (`explicit`,
    from configure), which apply; both kinds of difference are printed. The weights fix the architecture, so a
    model key set to another value than the checkpoint's is refused. Returns the checkpoint (loaded once).
    """
    checkpoint = load_checkpoint(cfg.out_dir)
    saved = checkpoint.get("config") or {}
    model_args = checkpoint.get("model_args") or {}
    taken, changed = [], []
    for key, value in saved.items():
        if not hasattr(cfg, key) or key in MACHINE_KEYS or value == getattr(cfg, key):
            continue
        if key not in explicit:
            taken.append(f"{key}={value!r}")
            setattr(cfg, key, value)
        elif key in MODEL_KEYS and key in model_args and getattr(cfg, key) != model_args[key]:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} but the run in {cfg.out_dir} has {key}={model_args[key]!r}: "
                              f"a resumed run keeps its architecture; drop --{key}, or start a new run in another out_dir")
        else:
            changed.append(f"{key} {value!r} -> {getattr(cfg, key)!r}")
    if system.master and taken:
        print(f"resume: settings from the checkpoint's config (not this command's defaults): {', '.join(taken)}")
    if system.master and changed:
        print(f"resume: changed on the command line: {', '.join(changed)}")
    return checkpoint


def resume_state(checkpoint, raw_model, optimizer, scaler, cfg, system, model_state=None):
    """Continue a run exactly: load weights (model_state, else the checkpoint's), optimizer, loss
    scaler and RNG states; forget log lines after the checkpoint. Returns the training loop's state."""
    saved = checkpoint.get("config", {}).get("optimizer", "adamw")
    if saved != cfg.optimizer:
        raise TrainError(f"the checkpoint in {cfg.out_dir} was trained with optimizer={saved}, this run asks for "
                         f"{cfg.optimizer}: resume with --optimizer={saved} (its state does not carry over)")
    load_full_state(raw_model, optimizer, model_state or checkpoint["model"], checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    state = {"iter_num": checkpoint["iter_num"], "best_val_loss": checkpoint["best_val_loss"], **checkpoint.get("counters", {})}
    rngs = checkpoint.get("rng") or []
    if len(rngs) == system.world_size:
        set_rng_state(rngs[system.rank])
    elif system.master:
        print(f"note: checkpoint was written by {len(rngs)} processes, this run has {system.world_size}; "
              f"data order is kept, dropout randomness is reseeded")
    if system.master:
        truncate_log(cfg.out_dir, state["iter_num"])
        print(f"resuming from {cfg.out_dir} at step {state['iter_num']}")
    return state


def start_run(cfg, system, raw_model, checkpoint=None, model_state=None):
    """What the training loop works on: the model to call (compiled, DDP or FSDP), the optimizer, the loss
    scaler and the loop's state. With a checkpoint (init_from=resume), all of them continue where it left
    off; model_state are the weights to load when they are not the checkpoint's own (finetune.py)."""
    if system.master:  # before anything is written to out_dir
        system.out_dir_lock = lock_out_dir(cfg.out_dir)
        if checkpoint is None and not cfg.eval_only:
            start_fresh(cfg)
    model = wrap_model(raw_model, cfg, system)
    optimizer = make_optimizer(cfg, raw_model, system.device_type)
    scaler = torch.amp.GradScaler(system.device_type, init_scale=cfg.init_loss_scale, enabled=system.dtype == "float16")
    state = {"iter_num": 0, "best_val_loss": float("inf")}
    if checkpoint is not None:
        state = resume_state(checkpoint, raw_model, optimizer, scaler, cfg, system, model_state)
    state["start_iter"] = state["iter_num"]
    return SimpleNamespace(model=model, raw_model=raw_model, optimizer=optimizer, scaler=scaler, state=state)


# -----------------------------------------------------------------------------
# the training loop, shared with finetune.py

class Trainer:
    """
    Optimise until max_iters or max_time; evaluate every eval_interval, checkpoint on improvement (or
    always), log to log.jsonl and loss.png. `run` is start_run's (model, raw_model, optimizer, scaler,
    state: iter_num, best_val_loss and counters that survive resumes). `task` supplies the objective:
    batch(index) -> the micro-batch with that global index; loss(model, batch) -> scalar; evaluate(model)
    -> metrics with 'val_loss'; checkpoint_extra() -> entries added to checkpoints (they may replace 'model':
    finetune.py stores a classifier's body, or LoRA merged, as a plain GPT); sample(model) or None;
    tokens_per_micro_batch; optionally `select` (lower is better: picks checkpoints, runs patience; 'val_error' for
    classifiers) and start_is_candidate=False (choose after the first step). lr_scale, unfreeze_iter: per group.
    """

    def __init__(self, cfg, system, run, task, clock=time.time):  # clock: the seconds max_time counts
        self.cfg, self.system, self.run, self.task, self.clock = cfg, system, run, task, clock
        self.accum = cfg.gradient_accumulation_steps // system.world_size
        self.tokens_per_iter = task.tokens_per_micro_batch * self.accum * system.world_size
        self.params = [p for p in run.model.parameters() if p.requires_grad]
        self.metrics, self.stop_signal, self.progress, self.select = {}, None, 0.0, getattr(task, "select", "val_loss")
        self.plotted = clock()  # when loss.png was last drawn: first after PLOT_EVERY_S, or at the last eval

    def fit(self):
        """The loop. Returns the last eval's metrics."""
        cfg, state = self.cfg, self.run.state
        if self.system.master:
            os.makedirs(cfg.out_dir, exist_ok=True)
        if cfg.wandb_log and self.system.master:
            import wandb  # optional: pip install wandb
            wandb.init(project=cfg.wandb_project, name=os.path.basename(cfg.out_dir), config=vars(cfg))
        self.t_start, self.elapsed0 = self.clock(), state.get("train_time", 0.0)
        self.t_last, self.it_last = self.clock(), state["iter_num"]  # throughput excludes evaluation
        # SIGTERM is what Slurm, Kubernetes and torchrun send before they kill: it stops the run as Ctrl-C does
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            elapsed = self.elapsed0  # then the ranks' mean after each step, so every rank decays and stops alike
            while True:
                it = state["iter_num"]
                step = schedule_step(it, elapsed, cfg)
                self.progress = min(step / max(1, cfg.max_iters), 1.0)
                lr = get_lr(step, cfg)
                for group in self.run.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0) * (it >= group.get("unfreeze_iter", 0))
                last = it >= cfg.max_iters or (cfg.max_time and elapsed >= cfg.max_time)
                if it % cfg.eval_interval == 0 or last or cfg.eval_only:
                    if self.evaluate_and_checkpoint(it, lr, last):
                        break
                    self.t_last, self.it_last = self.clock(), it
                if self.task.sample and cfg.sample_every and it % cfg.sample_every == 0 and it > 0:
                    self.task.sample(self.run.raw_model)  # on every rank: an FSDP model is gathered collectively first
                loss, grad_norm, stop_votes, elapsed = self.optimizer_step(it)
                state["iter_num"] = it + 1
                if it % cfg.log_interval == 0 and self.system.master and loss is not None:
                    self.log_step(it, loss, lr, grad_norm)
                if stop_votes > 0:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            state["train_time"] = self.elapsed()
            path = self.save()
            signum = self.stop_signal or signal.SIGINT
            if self.system.master:
                plot_training(cfg.out_dir, cfg.plot_log_scale)
                print(f"\ninterrupted at step {state['iter_num']} ({signal.Signals(signum).name}): checkpoint saved to "
                      f"{path}; continue with --init_from=resume --out_dir={cfg.out_dir}", flush=True)
            raise SystemExit(128 + signum) from None  # 130 after Ctrl-C, 143 after SIGTERM: the shell's convention
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.metrics

    def elapsed(self):
        """Seconds of training in this run and the runs it resumes."""
        return self.elapsed0 + self.clock() - self.t_start

    def on_signal(self, signum, frame):
        """The first signal finishes the current step, saves and exits; a second one exits at once, without
        saving (a step cut in the middle is not a state to resume from)."""
        if self.stop_signal is not None:
            print(f"\nsecond {signal.Signals(signum).name}: stopping at once, without saving", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.stop_signal = signum

    def evaluate_and_checkpoint(self, it, lr, last):
        """Evaluate, log, checkpoint when due; True when the run ends here (last step, eval_only, patience)."""
        cfg, state, master = self.cfg, self.run.state, self.system.master
        self.metrics = metrics = self.task.evaluate(self.run.model)
        state["train_time"] = self.elapsed()
        record = {"iter": it, **metrics, "lr": lr, "progress": round(self.progress, 4), "tokens": it * self.tokens_per_iter,
                  "time": round(state["train_time"], 2)}
        candidate = it > state.get("start_iter", 0) or getattr(self.task, "start_is_candidate", True)  # see the docstring
        improved = candidate and metrics[self.select] < state["best_val_loss"]  # best_val_loss: the best `select` value
        if master:
            print(f"step {it}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
            append_log(cfg.out_dir, record)
            if last or cfg.eval_only or self.clock() - self.plotted >= PLOT_EVERY_S:
                plot_training(cfg.out_dir, cfg.plot_log_scale)
                self.plotted = self.clock()
            if cfg.wandb_log:
                import wandb
                wandb.log(record)
        if improved:
            state["best_val_loss"] = metrics[self.select]
        if candidate:
            state["evals_since_best"] = 0 if improved else state.get("evals_since_best", 0) + 1
        stalled = cfg.patience and state.get("evals_since_best", 0) >= cfg.patience
        if (improved or cfg.always_save_checkpoint) and it > state.get("start_iter", 0) and not cfg.eval_only:
            path = self.save()
            if master:
                print(f"saved checkpoint to {path}", flush=True)
        if master and last and cfg.max_time and it < cfg.max_iters:
            print(f"max_time={cfg.max_time:g}s reached at step {it}")
        if master and stalled and not last:
            print(f"early stop at step {it}: {self.select} has not improved for {cfg.patience} evals "
                  f"(best {state['best_val_loss']:.4f})")
        return bool(cfg.eval_only or last or stalled)

    def optimizer_step(self, it):
        """accum micro-steps, gradients synchronised on the last one, then one optimizer step. Returns the
        mean loss over the ranks (None if it was not finite and the step was skipped), the gradient norm,
        whether a rank was asked to stop, and the ranks' mean training time (one clock for the schedule)."""
        cfg, run, system = self.cfg, self.run, self.system
        total = torch.zeros((), device=system.device)
        for micro in range(self.accum):
            batch = self.task.batch(it * cfg.gradient_accumulation_steps + system.rank * self.accum + micro)
            with gradient_sync(run.model, micro == self.accum - 1):
                loss = self.task.loss(run.model, batch) / self.accum
                run.scaler.scale(loss).backward()
            total += loss.detach()
        run.scaler.unscale_(run.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # every rank learns the mean loss and whether any rank was asked to stop
        loss_value, stop_votes, elapsed = all_reduce_mean([total.item(), float(self.stop_signal is not None), self.elapsed()], system)
        finite = math.isfinite(loss_value) and (run.scaler.is_enabled() or bool(torch.isfinite(grad_norm)))
        if finite:
            self.apply_step(it)
        else:
            self.skip_step(it, loss_value, grad_norm)
        run.optimizer.zero_grad(set_to_none=True)
        return (loss_value if finite else None), float(grad_norm), stop_votes, elapsed

    def apply_step(self, it):
        """The optimizer step through the loss scaler, which skips it and halves the scale when float16
        gradients overflowed."""
        scaler, state = self.run.scaler, self.run.state
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(self.run.optimizer)
        scaler.update()
        if scale_before is not None and scaler.get_scale() < scale_before:
            state["fp16_overflows"] = state.get("fp16_overflows", 0) + 1
            if self.system.master:
                print(f"step {it}: fp16 gradient overflow, step skipped by GradScaler, loss scale -> {scaler.get_scale():g}")

    def skip_step(self, it, loss_value, grad_norm):
        """A NaN or infinite loss: stop (keeping the last good checkpoint) or skip the step, as nan_policy says."""
        cfg, state = self.cfg, self.run.state
        if cfg.nan_policy == "stop":
            good = os.path.join(cfg.out_dir, "ckpt.pt")
            raise TrainError(f"loss is {loss_value} (gradient norm {float(grad_norm)}) at step {it}: stopping (nan_policy='stop'); "
                             f"the last good checkpoint is {good if os.path.exists(good) else 'none (none was saved yet)'}; "
                             f"lower learning_rate, or set nan_policy='skip'")
        state["skipped_steps"] = state.get("skipped_steps", 0) + 1
        if self.system.master:
            print(f"step {it}: loss is {loss_value}, step skipped (nan_policy='skip', {state['skipped_steps']} so far)")
            append_log(cfg.out_dir, {"iter": it, "skipped": True, "loss_value": str(loss_value)})

    def log_step(self, it, loss, lr, grad_norm):
        """One line per log_interval steps to stdout and log.jsonl: loss, lr, time per step, throughput, MFU."""
        now = self.clock()
        dt = max(now - self.t_last, 1e-9) / max(1, it + 1 - self.it_last)
        mfu = self.run.raw_model.estimate_mfu(self.tokens_per_iter, dt, self.system.device, self.system.dtype, self.cfg.block_size)
        append_log(self.cfg.out_dir, {"iter": it, "loss": loss, "lr": lr, "progress": round(self.progress, 4), "dt_ms": round(dt * 1000, 2),
                                      "tok_per_sec": round(self.tokens_per_iter / dt), "mfu": mfu, "grad_norm": grad_norm,
                                      "tokens": (it + 1) * self.tokens_per_iter, "time": round(self.elapsed(), 2)})
        print(f"iter {it}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f}ms, {self.tokens_per_iter / dt:,.0f} tok/s"
              + (f", mfu {mfu * 100:.1f}%" if mfu is not None else ""), flush=True)
        self.t_last, self.it_last = now, it + 1

    def save(self):
        """Checkpoint everything an exact resume needs (collective: every rank must call). Returns its path."""
        run, system, state, cfg = self.run, self.system, self.run.state, self.cfg
        model_sd, optim_sd = full_state(run.raw_model, run.optimizer, system)
        rngs = [rng_state()]
        if system.distributed:  # each rank's dropout RNG, so a resumed DDP run continues exactly
            rngs = [None] * system.world_size
            dist.all_gather_object(rngs, rng_state())
        if not system.master:
            return None
        return save_checkpoint({
            "model": model_sd, "optimizer": optim_sd, "scaler": run.scaler.state_dict(),
            "model_args": asdict(run.raw_model.config),
            "iter_num": state["iter_num"], "best_val_loss": state["best_val_loss"], "config": dict(vars(cfg)),
            "rng": rngs, "world_size": system.world_size, "metrics": self.metrics,
            "data_position": {"next_batch_index": state["iter_num"] * cfg.gradient_accumulation_steps},
            "counters": {k: v for k, v in state.items() if k not in ("iter_num", "best_val_loss")},
            **self.task.checkpoint_extra()}, cfg.out_dir, cfg.keep_last)


# -----------------------------------------------------------------------------

def check_config(cfg, system):
    problems = []
    if cfg.wandb_log and importlib.util.find_spec("wandb") is None:
        problems.append("wandb_log=True needs the wandb package: pip install wandb, or drop --wandb_log")
    for key in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_iters", "eval_interval", "log_interval"):
        if getattr(cfg, key) < 1:
            problems.append(f"{key}={getattr(cfg, key)} must be at least 1")
    if cfg.gradient_accumulation_steps % system.world_size:
        problems.append(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} is global and must be divisible "
                        f"by the number of processes ({system.world_size})")
    if cfg.objective not in ("clm", "mlm", "span"):
        problems.append(f"objective={cfg.objective!r} is not clm, mlm or span")
    if cfg.objective != "span" and cfg.n_decoder_layer:
        problems.append(f"n_decoder_layer={cfg.n_decoder_layer} is for objective=span (an encoder-decoder); "
                        f"clm and mlm have no decoder")
    if cfg.nan_policy not in ("stop", "skip"):
        problems.append(f"nan_policy={cfg.nan_policy!r} is not stop or skip")
    if not 0 < cfg.mask_prob < 1:
        problems.append(f"mask_prob={cfg.mask_prob} must be between 0 and 1")
    if cfg.fsdp and cfg.optimizer == "muon":  # Newton-Schulz needs each matrix whole; FSDP holds a shard per rank
        problems.append("optimizer=muon does not work with fsdp=True (FSDP shards the matrices Muon orthogonalises); "
                        "use optimizer=adamw, or DDP (fsdp=False)")
    if problems:
        raise ConfigError("; ".join(problems))
    if cfg.objective == "span" and getattr(cfg, "task", "lm") == "lm":  # finetune's seq2seq reads pairs, not spans
        span_lengths(cfg.block_size, cfg.mask_prob, cfg.mean_span)  # a one-line error when the sizes do not work out


@script_main
def main(argv=None):
    explicit = set()
    cfg = configure(DEFAULTS, argv, default_config=os.path.join(HERE, "config", "shakespeare_char.py"), explicit=explicit)
    system = setup_system(cfg)
    try:
        checkpoint = resume_config(cfg, explicit, system) if cfg.init_from == "resume" else None
        check_config(cfg, system)
        data_dir = find_dataset(cfg.dataset, system)
        meta = read_meta(data_dir)
        span = span_lengths(cfg.block_size, cfg.mask_prob, cfg.mean_span) if cfg.objective == "span" else None
        check_bins(data_dir, meta, span.window if span else cfg.block_size)
        tok = load_tokenizer(data_dir)
        seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP shards each rank's own copy)
        model, tok, checkpoint = start_model(cfg, tok, cfg.objective == "clm", checkpoint, seq2seq=span is not None)
        seed_everything(cfg.seed + system.rank)  # then each rank its own dropout randomness
        model.to(system.device)
        if system.master:
            print(f"{cfg.objective} model: {model.get_num_params() / 1e6:.2f}M parameters, "
                  f"{model.config.n_layer}{f'+{model.config.n_decoder_layer}' if span else ''} layers, "
                  f"vocab {tok.vocab_size}{f' + {len(SENTINELS)} sentinels' if span else ''} ({tok.kind}), device {system.device}, dtype {system.dtype}"
                  + (f", {system.world_size} processes" if system.distributed else ""))
        run = start_run(cfg, system, model, checkpoint if cfg.init_from == "resume" else None)
        batch_fn = make_batch_fn(cfg, data_dir, meta, tok, system)
        task = SimpleNamespace(
            batch=batch_fn, loss=lambda m, batch: lm_loss(m, batch, system.autocast),
            evaluate=lambda m: evaluate_lm(m, batch_fn, cfg, system, min(tok.special_ids.values())),
            checkpoint_extra=lambda: {"tokenizer": tok.spec(), "dataset": cfg.dataset},
            sample={"clm": lambda m: print_sample(m, tok, cfg, system),
                    "span": lambda m: print_span_fill(m, tok, batch_fn, system)}.get(cfg.objective),
            tokens_per_micro_batch=cfg.batch_size * (span.window if span else cfg.block_size))  # text tokens read
        Trainer(cfg, system, run, task).fit()
        if cfg.eval_only and cfg.mlm_baselines and system.master:
            scores = mlm_baselines(model, batch_fn, cfg, data_dir, meta, system)
            print(f"masked-token accuracy on {scores.pop('positions')} val positions: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if not cfg.eval_only:
            if cfg.objective == "mlm":
                print_fill_mask(model, tok, cfg, data_dir, meta, system)
            else:
                task.sample(model)
        system.done = True
    finally:
        teardown(system)


@torch.no_grad()
def print_sample(model, tok, cfg, system):
    """A short sample from the start of a line (of a document, when the text has no newlines, as perplexity
    models' normalised text), so a run shows what it has learned."""
    model = unsharded(model, system)
    if not system.master:
        return
    model.eval()
    start = torch.tensor([sample_start(tok)], device=system.device)
    safe = SafeGeneration(tok, "\n", cfg.sample_tokens, phone=cfg.safe_phone) if cfg.safe else None
    with system.autocast:
        out = model.generate(start, cfg.sample_tokens, temperature=0.8, top_k=200,
                             generator=torch.Generator(device=system.device).manual_seed(cfg.seed),
                             suppress_tokens=[tok.special_ids[s] for s in BERT_SPECIALS],
                             logits_processor=safe and safe.filter)
    model.train()
    text = tok.decode(out[0, 1:].tolist())
    print("-" * 40 + "\n" + (safe.redact(text) if safe else text) + "\n" + "-" * 40, flush=True)
    if safe:
        print(safe.summary(), flush=True)


def sample_start(tok):
    """The prompt of an unprompted sample: a new line, or <|endoftext|> (a new document, as GPT-2 samples
    unconditionally) for a character vocabulary that has no "\n"."""
    return tok.encode("\n") if tok.kind != "char" or "\n" in tok.stoi else [tok.special_ids[EOT]]


def print_fill_mask(model, tok, cfg, data_dir, meta, system):
    """An encoder's demo: mask some tokens of a validation window and show its guesses."""
    model = unsharded(model, system)
    if not system.master:
        return
    data = read_bin(data_dir, "val", meta)
    ids = data[: min(64, cfg.block_size)].astype(np.int64).tolist()
    g = random.Random(cfg.seed)
    ordinary = [i for i, t in enumerate(ids) if t not in tok.special_ids.values()]
    for i in g.sample(ordinary, k=min(4, len(ordinary))):
        ids[i] = tok.special_ids["[MASK]"]
    model.eval()
    show_fill_mask(tok, *model.fill_mask(ids, tok.special_ids["[MASK]"], tok.special_ids.values(), top_k=3))
    model.train()


@torch.no_grad()
def print_span_fill(model, tok, batch_fn, system):
    """An encoder-decoder's demo: a corrupted validation window, the spans it writes for the sentinels
    (greedy), and the true ones."""
    model = unsharded(model, system)
    if not system.master:
        return
    src, decoder_idx, target = (t[:1] for t in batch_fn(0, split="val", kind="eval"))
    model.eval()
    with system.autocast:
        out = model.generate(src, target.size(1), decoder_idx=decoder_idx[:, :1], temperature=0, stop_token=tok.special_ids[EOT])
    model.train()
    written = [t for t in out[0, 1:].tolist() if t != tok.special_ids[EOT]]
    filled = restore_spans(src[0].tolist(), written, tok.sentinel_ids.values())
    print("-" * 40 + f"\ninput:   {tok.decode(src[0].tolist())!r}\nwritten: {tok.decode(written)!r}\ntruth:   "
          f"{tok.decode(target[0, :-1].tolist())!r}\nfilled:  {tok.decode(filled)!r}\n" + "-" * 40, flush=True)


def show_fill_mask(tok, filled, steps, out=None):
    """Print what GPT.fill_mask chose at each [MASK] (its candidates and their probabilities), then the text."""
    for pos, candidates in steps:
        print(f"[MASK] at token {pos}: " + ", ".join(f"{tok.decode([c])!r} {p:.3f}" for c, p in candidates), file=out)
    print("filled: " + tok.decode(filled), file=out)


if __name__ == "__main__":
    main()
