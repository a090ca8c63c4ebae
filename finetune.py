"""
Transfer learning: start from a pretrained model and adapt it to a task.

    python finetune.py config/finetune_sst2.py                    # classify: sentiment head on the MLM encoder
    python finetune.py config/finetune_sst2.py --predict="a gorgeous , witty film|a dull mess" --init_from=out-sst2
    python finetune.py config/finetune_shakespeare.py             # lm: continue causal LM training on new text
    python finetune.py config/sft_alpaca.py                       # sft: instruction tuning, then
    python sample.py --out_dir=out-sft-alpaca --template=alpaca --start="Give three tips for staying healthy."
    python finetune.py config/finetune_sst2.py --lora_rank=8      # LoRA: train low-rank adapters only
    python finetune.py config/seq2seq_alpaca.py                   # seq2seq: an encoder-decoder, input -> output

Tasks:
    lm        next-token (or, for an encoder, masked-token) training on a prepared data/<dataset>/,
              usually with a low constant or cosine learning rate and early stopping (`patience`)
    classify  a linear head on one pooled vector per sequence: [CLS] or the mean for an encoder, the
              last real token for a causal model; accuracy (and macro-F1 for >2 classes) at every eval
    sft       Alpaca-style instruction tuning: loss on the response tokens only
    seq2seq   an encoder-decoder (train.py's objective=span, or scratch) reads the input and learns to
              write the output: {"input", "output"} JSONL lines, or Alpaca records (instruction and
              input -> output); the loss is on the output only, which is all the decoder writes

Training itself is train.py's loop (accumulation, AMP, compile, DDP under torchrun, checkpoints,
exact resume, logs, loss.png); this file supplies the task's batches, loss and evaluation. Every
checkpoint stores the body as a plain GPT (LoRA merged in), so sample.py and train.py load it as
they would a pretrained one; the task head and the unmerged adapters sit next to it.

References: ULMFiT (Howard & Ruder 2018), GPT-1 (Radford et al. 2018), BERT (Devlin et al. 2019),
LoRA (Hu et al. 2021), Stanford Alpaca (Taori et al. 2023), SST-2 (Socher et al. 2013),
TREC (Li & Roth 2002), T5 (Raffel et al. 2020).
"""

import functools
import json
import math
import os
import time
from collections import Counter
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.nn import functional as F

import train
from configurator import ConfigError, configure, file_or_text, script_main
from dataset import SHARED_DATA, DataError, check_bins, in_val_split, read_meta
from model import GPT, checkpoint_path, load_checkpoint
from readers import read_labelled_lines
from safety import describe_redactions, pii_kinds, redact
from tokenizer import EOT, build_tokenizer, encode_known, format_prompt, load_tokenizer

PRETRAINING_ONLY = ("objective", "mlm_baselines", "sample_every", "sample_tokens")  # the objective follows the model
DEFAULTS = {k: v for k, v in train.DEFAULTS.items() if k not in PRETRAINING_ONLY} | dict(
    # I/O and init (see train.py for the keys shared with pretraining)
    out_dir="out-finetune",
    init_from="out-mlm-reviews",  # an out_dir or .pt | resume | scratch | gpt2[-medium|-large|-xl] | a Hugging Face folder
    tokenizer="gpt2",             # init_from=scratch only: gpt2, or a prepared dataset whose tokenizer to use
    causal=True,                  # init_from=scratch only: False builds a bidirectional encoder (as an MLM would be);
                                  # task=seq2seq always builds an encoder-decoder (n_layer + n_decoder_layer blocks)
    eval_interval=100,
    eval_iters=20,                # lm: batches per split; classify/sft/seq2seq: train batches evaluated (val is read whole)
    log_interval=10,
    always_save_checkpoint=False,  # keep the checkpoint with the best val loss
    # task
    task="classify",              # lm | classify | sft | seq2seq
    dataset="sst2",               # lm: data/<name>; classify: sst2 | trec | a .jsonl/.tsv file; sft: an Alpaca .json;
                                  # seq2seq: a .jsonl of {"input", "output"} or an Alpaca .json
    val_dataset="",               # classify/sft/seq2seq: the file to evaluate on ("" = the recipe's, or val_fraction of train)
    val_fraction=0.05,            # share of the training examples held out when there is no val_dataset
    train_examples=0,             # classify/sft/seq2seq: train on only this many examples (0 = all): for classify a
                                  # sample stratified by class; the same for the same seed, nested (the 100 are among the 300)
    select="auto",                # the checkpoint kept (and scored on test) is the best by: acc | loss | auto (acc
                                  # for classify, the metric reported; loss for lm, sft and seq2seq)
    pool="auto",                  # classify: first ([CLS]) | mean | last | auto (mean for an encoder, last if causal)
    predict="",                   # classify: sentences separated by |, or FILE:path (one per line); prints label + probability
                                  # (with safe=True, each sentence it prints back has its personal data redacted)
    template="alpaca",            # sft: the prompt template (see format_prompt)
    # parameter-efficient finetuning
    lora_rank=0,                  # > 0: train rank-r adapters on the target matrices, freeze the rest
    lora_alpha=16.0,              # adapter output scaled by lora_alpha / lora_rank (Hu et al. 2021, sec. 4.1)
    lora_dropout=0.0,
    lora_targets="c_attn,c_proj,c_fc",  # Linear layers (by name) in every block that get adapters (cross-attention also has c_kv)
    freeze_layers=0,              # the simpler alternative: freeze the embeddings and the first N blocks
    # ULMFiT's classifier recipe (Howard & Ruder 2018, sec. 3.2-3.3): layers nearer the input change more slowly
    layer_lr_decay=1.0,           # classify: each layer's learning rate is this times the one above it (the head and
                                  # final norm at 1; the embeddings count as one layer below the first block; ULMFiT: 1/2.6)
    unfreeze_every=0,             # classify, > 0: gradual unfreezing: at first only the head (and final norm) train, and
                                  # every this many steps the next layer down joins (0 = every layer trains from step 0)
    head_dropout=-1.0,            # classify: dropout on the pooled vector before the head (-1 = the model's dropout)
    # optimizer and schedule: finetuning takes small steps
    gradient_accumulation_steps=1,
    batch_size=32,
    block_size=0,                 # 0 = the pretrained model's context; smaller crops it
    dropout=0.1,
    learning_rate=1e-4,
    max_iters=1000,
    warmup_iters=50,
    lr_decay_iters=1000,
    min_lr=1e-5,
    weight_decay=0.01,
    beta2=0.99,
)

# -----------------------------------------------------------------------------
# task models: a classification head, and LoRA adapters

class Classifier(nn.Module):
    """A GPT body, one pooled vector per sequence, dropout, and a linear layer to the classes."""

    def __init__(self, gpt, n_classes, pool, dropout, layer_lr_decay=1.0, unfreeze_every=0):
        super().__init__()
        self.gpt, self.config, self.pool = gpt, gpt.config, pool
        self.layer_lr_decay, self.unfreeze_every = layer_lr_decay, unfreeze_every
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.n_embd, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        # the LM output layer is unused here: freeze it unless it is the (tied) input embedding, so that
        # DDP does not wait for gradients that never come
        unused = [gpt.mlm_transform] if gpt.config.mlm_transform else []
        unused += [gpt.lm_head] if not gpt.config.tie_embeddings else []
        for module in unused:
            module.requires_grad_(False)

    def forward(self, idx, padding_mask=None, labels=None):
        """Logits (B, n_classes) for token ids idx (B, T); padding_mask (B, T) is True at real tokens."""
        h = self.gpt.hidden_states(idx, padding_mask)                       # (B, T, C)
        logits = self.head(self.dropout(GPT.pool(h, padding_mask, self.pool)))  # (B, n_classes)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return logits, loss

    def configure_optimizers(self, *args, **kwargs):
        """The GPT's optimizer over the trainable parameters, its groups split by layer (split_by_layer)."""
        optimizer = GPT.configure_optimizers(self, *args, **kwargs)
        return split_by_layer(optimizer, self, self.layer_lr_decay, self.unfreeze_every)

    def estimate_mfu(self, *args, **kwargs):
        return self.gpt.estimate_mfu(*args, **kwargs)


class LoRALinear(nn.Module):
    """
    A frozen Linear plus a trainable low-rank update (Hu et al. 2021, eq. 3):
        y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,   A (r, in), B (out, r)
    A starts random and B at zero, so training starts from exactly the pretrained function. The
    frozen weight keeps its parameter name, so a merged checkpoint is an ordinary GPT state dict.
    """

    def __init__(self, linear, rank, alpha, dropout):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init, as in the LoRA reference code
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged_weight(self):
        return self.weight + self.scale * (self.lora_B @ self.lora_A)


def add_lora(gpt, rank, alpha, dropout, targets):
    """Freeze every parameter of gpt and put adapters on the target Linear layers of every block."""
    gpt.requires_grad_(False)
    names = [t.strip() for t in targets.split(",") if t.strip()]
    replaced = 0
    for block in [*gpt.transformer.h, *(gpt.decoder.h if hasattr(gpt, "decoder") else [])]:
        for parent in (block.attn, block.mlp, getattr(block, "cross_attn", None)):
            for name in names:
                if isinstance(getattr(parent, name, None), nn.Linear):
                    setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout))
                    replaced += 1
    if not replaced:
        raise ConfigError(f"lora_targets={targets!r} names no Linear layer of the blocks; use some of c_attn, c_proj, c_fc")
    return replaced


def freeze_first_layers(gpt, n):
    """Freeze the token and position embeddings (with a tied output layer) and the first n blocks."""
    if n > gpt.config.n_layer:
        raise ConfigError(f"freeze_layers={n} but the model has {gpt.config.n_layer} layers")
    for name in ("wte", "wpe"):
        if name in gpt.transformer:
            gpt.transformer[name].requires_grad_(False)
    for block in gpt.transformer.h[:n]:
        block.requires_grad_(False)


def merge_lora(gpt):
    """gpt's state dict as a plain GPT's, every adapter folded into its weight (W + alpha/r B A), and
    separately the adapters with the unmerged weights under them (what an exact resume needs)."""
    state = {k: v.detach() for k, v in gpt.state_dict().items()}
    adapters = {}
    for name, module in gpt.named_modules():
        if isinstance(module, LoRALinear):
            for key in ("weight", "lora_A", "lora_B"):
                adapters[f"{name}.{key}"] = state.pop(f"{name}.{key}")
            state[f"{name}.weight"] = module.merged_weight().detach()
    return state, adapters


def task_state(raw_model):
    """
    What a finetuning checkpoint stores: 'model', the body as a plain GPT state dict with LoRA merged
    (what sample.py, train.py and finetune.py's init_from read); 'lora', the adapters and the
    unmerged weights under them; 'classifier', the task head.
    """
    state, adapters = merge_lora(raw_model.gpt if isinstance(raw_model, Classifier) else raw_model)
    out = {"model": state} | ({"lora": adapters} if adapters else {})
    if isinstance(raw_model, Classifier):
        out["classifier"] = {k: v.detach() for k, v in raw_model.head.state_dict().items()}
    return out


def full_model_state(checkpoint, raw_model):
    """The inverse of task_state: raw_model's state dict from a finetuning checkpoint."""
    body = {**checkpoint["model"], **checkpoint.get("lora", {})}
    if not isinstance(raw_model, Classifier):
        return body
    return {f"gpt.{k}": v for k, v in body.items()} | {f"head.{k}": v for k, v in checkpoint["classifier"].items()}


def layer_depth(name, n_layer):
    """How far below the output parameter `name` sits: 0 for the task head and the final norm; 1 for the
    last block ... n_layer for the first (LoRA adapters count with their block); n_layer + 1 for the embeddings."""
    parts = name.split(".")
    if "h" in parts:  # [gpt.]transformer.h.<i>.…
        return n_layer - int(parts[parts.index("h") + 1])
    if "wte" in parts or "wpe" in parts:
        return n_layer + 1
    return 0


def split_by_layer(optimizer, model, layer_lr_decay, unfreeze_every):
    """
    ULMFiT's discriminative finetuning and gradual unfreezing (Howard & Ruder 2018, sec. 3.2, 3.3), for any
    optimizer: each of its parameter groups (decayed or not, Muon or AdamW) is split by layer_depth, and each
    part gets lr_scale = its group's lr_scale * layer_lr_decay ** depth (ULMFiT: lr / 2.6 per layer down) and
    unfreeze_iter = depth * unfreeze_every, the step before which train.Trainer gives it learning rate 0.
    Done before the first step, so no optimizer state refers to the old groups.
    """
    if layer_lr_decay == 1 and not unfreeze_every:
        return optimizer
    depth = {id(p): layer_depth(name, model.config.n_layer) for name, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        parts = {}
        for p in group["params"]:
            parts.setdefault(depth[id(p)], []).append(p)
        groups += [group | {"params": params, "depth": d, "lr_scale": group.get("lr_scale", 1.0) * layer_lr_decay ** d,
                            "unfreeze_iter": d * unfreeze_every} for d, params in sorted(parts.items())]
    optimizer.param_groups[:] = groups
    return optimizer


def count_parameters(raw_model):
    """(trainable, total) parameters; a tied embedding is counted once."""
    params = list(raw_model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# -----------------------------------------------------------------------------
# task data: labelled sentences and instruction records, read robustly, examples counted

CLASSIFY_RECIPES = {  # the labels in the files, in class-id order, and what to call them
    "sst2": dict(train="sst2/stsa.binary.train", val="sst2/stsa.binary.dev", test="sst2/stsa.binary.test",
                 labels=["0", "1"], names=["negative", "positive"]),
    # no official dev split: dev is a fixed 10% of TREC.train (545 questions, the same for every seed), so the
    # checkpoint is chosen without looking at the 500 test questions, which are scored once at the end
    "trec": dict(train="trec/TREC.train", test="trec/TREC.test", dev_fraction=0.1,
                 labels=["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"], names=["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]),
}


def read_examples(path, stats):
    """(text, label) pairs from a .jsonl ({"text", "label"} per line), a .tsv (text<TAB>label, an
    optional header) or `<label> <text>` lines (SST-2, TREC; TREC's fine label LOC:city becomes LOC)."""
    if not os.path.exists(path):
        raise DataError(f"dataset file {path} not found")
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in (line for line in f if line.strip()):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                label = record.get("label") if isinstance(record, dict) else None
                # a label is a name or a number; null, a list or an object would become a class of its own
                if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not isinstance(label, (str, int)) \
                        or not str(label).strip():
                    stats["skipped_records"] += 1
                    continue
                yield record["text"], str(record["label"])
    elif path.endswith(".tsv"):
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                text, _, label = line.rstrip("\n").rpartition("\t")
                if i == 0 and label.strip().lower() == "label":
                    continue
                if not text.strip() or not label.strip():
                    stats["skipped_records"] += bool(line.strip())
                    continue
                yield text, label.strip()
    else:
        for label, text in read_labelled_lines(path, stats):
            yield text, label.split(":")[0]


def encode_text(tok, text, stats):
    """Token ids of text; characters that a char vocabulary lacks are dropped and counted."""
    ids, dropped = encode_known(tok, text)
    stats["unknown_chars_dropped"] += dropped
    return ids


def classification_inputs(tok, texts, block_size, causal, stats):
    """Token ids per sentence: [CLS] text [SEP] for an encoder (BERT); text <|endoftext|> for a causal
    model, whose last token then has read the whole sentence (GPT-1's extract token). Long ones are cut."""
    ids = tok.special_ids
    out = []
    for text in texts:
        body = encode_text(tok, text, stats)
        room = block_size - (1 if causal else 2)
        stats["truncated"] += len(body) > room
        body = body[:room]
        out.append(body + [ids[EOT]] if causal else [ids["[CLS]"]] + body + [ids["[SEP]"]])
    return out


def dev_split(recipe, cfg):
    """(fraction, seed) that split the training examples into train and dev when there is no dev file: the
    recipe's fixed dev_fraction under seed 0 (the same dev for every run), else val_fraction under the run's seed."""
    return (recipe["dev_fraction"], 0) if recipe and "dev_fraction" in recipe else (cfg.val_fraction, cfg.seed)


def load_classification(cfg, tok, causal):
    """Examples {"ids", "labels"} per split (train, val, and test where the recipe has one), the class
    names and the counts of what was skipped or repaired."""
    stats = Counter()
    recipe = CLASSIFY_RECIPES.get(cfg.dataset)
    paths = {s: os.path.join(SHARED_DATA, recipe[s]) for s in ("train", "val", "test") if s in recipe} if recipe \
        else {"train": cfg.dataset}
    if cfg.val_dataset:
        paths["val"] = cfg.val_dataset
    pairs = {split: list(read_examples(path, stats)) for split, path in paths.items()}
    if not pairs["train"]:
        raise DataError(f"{paths['train']} has no usable examples ({dict(stats)}); check its format")
    if recipe:
        labels, names = recipe["labels"], recipe["names"]
    else:
        labels = sorted({lab for _, lab in pairs["train"]})
        if all(lab.isdigit() for lab in labels):
            labels.sort(key=int)
        names = labels
    present = {lab for _, lab in pairs["train"] if lab in labels}
    if len(present) < 2:  # one class is learned perfectly by predicting it, which says nothing
        raise DataError(f"{paths['train']} has examples of {len(present)} class{'es' if len(present) != 1 else ''} "
                        f"({', '.join(sorted(present))}); a classifier needs at least two")
    if "val" not in pairs:  # hold out val_fraction of train, chosen by a stable hash of each example's index
        held = [in_val_split(i, *dev_split(recipe, cfg)) for i in range(len(pairs["train"]))]
        pairs["val"] = [p for p, h in zip(pairs["train"], held) if h]
        pairs["train"] = [p for p, h in zip(pairs["train"], held) if not h]
    data = {"names": names, "stats": stats}
    for split, split_pairs in pairs.items():
        known = [(t, lab) for t, lab in split_pairs if lab in labels]
        stats[f"{split}_unknown_label"] += len(split_pairs) - len(known)
        data[split] = {"ids": classification_inputs(tok, [t for t, _ in known], cfg.block_size, causal, stats),
                       "labels": [labels.index(lab) for _, lab in known]}
    if not data["val"]["ids"]:
        raise DataError(f"no validation examples for {cfg.dataset}: give val_dataset=<file> or raise val_fraction")
    return data


def sft_example(tok, record, block_size, template, stats):
    """(ids, targets) for one Alpaca record: the prompt, then the response and <|endoftext|>. targets
    are ids shifted left by one, -100 wherever the next token belongs to the prompt; None if the
    response does not fit after the prompt at all."""
    prompt = encode_text(tok, format_prompt(record["instruction"], record.get("input", ""), template), stats)
    response = encode_text(tok, record["output"], stats) + [tok.special_ids[EOT]]
    tokens = (prompt + response)[:block_size + 1]
    stats["truncated"] += len(prompt) + len(response) > block_size + 1
    labels = ([-100] * len(prompt) + response)[:block_size + 1]
    if all(t == -100 for t in labels[1:]):
        stats["skipped_prompt_fills_context"] += 1
        return None
    return tokens[:-1], labels[1:]


def load_sft(cfg, tok):
    """Train and val examples {"ids", "targets", "stats"} from Alpaca-format JSON files."""
    stats = Counter()

    def read(path):
        if not os.path.exists(path):
            raise DataError(f"instruction file {path} not found; give dataset=<an Alpaca .json> "
                                f"(e.g. {SHARED_DATA}/instruction_tuning/alpaca_en_demo.json)")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                records = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); give a JSON array of Alpaca records") from None
        if not isinstance(records, list):
            raise DataError(f"{path} holds a JSON {type(records).__name__}, not an array of Alpaca records "
                            f"({{\"instruction\", \"input\", \"output\"}})")
        good = [r for r in records if isinstance(r, dict) and isinstance(r.get("instruction"), str)
                and isinstance(r.get("output"), str) and isinstance(r.get("input", ""), str)]
        stats["skipped_records"] += len(records) - len(good)
        return good

    records = read(cfg.dataset)
    if cfg.val_dataset:
        splits = {"train": records, "val": read(cfg.val_dataset)}
    else:
        held = [in_val_split(i, cfg.val_fraction, cfg.seed) for i in range(len(records))]
        splits = {"train": [r for r, h in zip(records, held) if not h], "val": [r for r, h in zip(records, held) if h]}
    data = {"stats": stats}
    for split, recs in splits.items():
        examples = [e for e in (sft_example(tok, r, cfg.block_size, cfg.template, stats) for r in recs) if e]
        if not examples:
            raise DataError(f"no usable {split} examples in {cfg.dataset} ({dict(stats)})")
        data[split] = {"ids": [e[0] for e in examples], "targets": [e[1] for e in examples]}
    return data


def read_pairs(path, stats):
    """(input, output) texts from a .jsonl of {"input", "output"} lines, or from an Alpaca .json (a list of
    {"instruction", "input", "output"}), whose instruction, then its input after a blank line, is the input."""
    if not os.path.exists(path):
        raise DataError(f"seq2seq file {path} not found; give dataset=<a .jsonl of {{'input', 'output'}} lines, or an "
                        f"Alpaca .json> (e.g. {SHARED_DATA}/instruction_tuning/alpaca_en_demo.json)")
    with open(path, encoding="utf-8", errors="replace") as f:
        if not path.endswith(".jsonl"):
            records = json.load(f)
        else:
            records = []
            for line in (line for line in f if line.strip()):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    stats["skipped_records"] += 1
    pairs = []
    for r in records if isinstance(records, list) else []:
        if not isinstance(r, dict) or not isinstance(r.get("output"), str) or not isinstance(r.get("input", ""), str):
            stats["skipped_records"] += 1
        elif isinstance(r.get("instruction"), str):
            pairs.append((r["instruction"] + ("\n\n" + r["input"] if r.get("input", "").strip() else ""), r["output"]))
        elif "input" in r:
            pairs.append((r["input"], r["output"]))
        else:
            stats["skipped_records"] += 1
    return pairs


def seq2seq_example(tok, source, target, block_size, stats):
    """(input ids, decoder input, targets) for one pair: the encoder reads the input (cut to block_size);
    the decoder reads <|endoftext|> and the output, and learns to write the output and <|endoftext|> (as
    span corruption's targets end). None when no input is left."""
    eot = tok.special_ids[EOT]
    src, out = encode_text(tok, source, stats), encode_text(tok, target, stats) + [eot]
    stats["truncated"] += len(src) > block_size or len(out) > block_size
    if not src:
        stats["skipped_empty_input"] += 1
        return None
    out = out[:block_size]
    return src[:block_size], [eot] + out[:-1], out


def load_seq2seq(cfg, tok):
    """Train and val examples {"ids", "decoder_ids", "targets"} from files of input -> output pairs."""
    stats = Counter()
    pairs = read_pairs(cfg.dataset, stats)
    if cfg.val_dataset:
        splits = {"train": pairs, "val": read_pairs(cfg.val_dataset, stats)}
    else:
        held = [in_val_split(i, cfg.val_fraction, cfg.seed) for i in range(len(pairs))]
        splits = {"train": [p for p, h in zip(pairs, held) if not h], "val": [p for p, h in zip(pairs, held) if h]}
    data = {"stats": stats}
    for split, split_pairs in splits.items():
        examples = [e for e in (seq2seq_example(tok, a, b, cfg.block_size, stats) for a, b in split_pairs) if e]
        if not examples:
            source = cfg.val_dataset if split == "val" and cfg.val_dataset else cfg.dataset
            raise DataError(f"no usable {split} examples in {source} ({dict(stats)}); check its format")
        data[split] = {key: [e[i] for e in examples] for i, key in enumerate(("ids", "decoder_ids", "targets"))}
    return data


# -----------------------------------------------------------------------------
# batches: a pure function of their index, so resume and any number of ranks see the same data

@functools.lru_cache(maxsize=4)
def epoch_order(n, seed, epoch):
    """A fresh shuffle of n examples for every epoch."""
    return torch.randperm(n, generator=train.batch_generator(seed, "epoch", epoch)).tolist()


def batch_indices(index, batch_size, n, seed):
    """Examples of micro-batch `index`: positions index*B..index*B+B-1 of the endless shuffled stream."""
    positions = range(index * batch_size, (index + 1) * batch_size)
    return [epoch_order(n, seed, p // n)[p % n] for p in positions]


def stratified_order(labels, seed):
    """
    An order of the examples whose first n, for every n, are a sample stratified by class: the next example
    always comes from the class furthest below its share of the whole set (ties to the lower class id), so
    every class holds its share of any prefix to within one example. Within a class the order is a shuffle
    that depends only on the seed and the class. The samples are therefore the same for the same seed,
    differ between seeds, and nest: the first 100 are among the first 300.
    """
    classes = sorted(set(labels))
    members = {c: [i for i, label in enumerate(labels) if label == c] for c in classes}
    for c in classes:
        shuffle = torch.randperm(len(members[c]), generator=train.batch_generator(seed, "subset", c)).tolist()
        members[c] = [members[c][j] for j in shuffle]
    share = {c: len(members[c]) / len(labels) for c in classes}
    taken = dict.fromkeys(classes, 0)
    order = []
    for k in range(1, len(labels) + 1):
        c = max((c for c in classes if taken[c] < len(members[c])), key=lambda c: (k * share[c] - taken[c], -c))
        order.append(members[c][taken[c]])
        taken[c] += 1
    return order


def subset(split_data, n, seed):
    """n of the examples (all when n is 0 or at least their number), in their original order: stratified by
    class for labelled data (stratified_order), a seeded random sample otherwise (sft)."""
    count = len(split_data["ids"])
    if not 0 < n < count:
        return split_data
    if "labels" in split_data:
        keep = stratified_order(split_data["labels"], seed)[:n]
    else:
        keep = torch.randperm(count, generator=train.batch_generator(seed, "subset")).tolist()[:n]
    keep = sorted(keep)
    return {k: [v[i] for i in keep] for k, v in split_data.items()}


def pad_batch(rows, pad_value):
    """Right-pad lists of ids to the longest: (B, T) tensor and the (B, T) mask of real positions."""
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_value] * (T - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[True] * len(r) + [False] * (T - len(r)) for r in rows])
    return ids, mask


def make_task_batch(split_data, indices, pad_id, system):
    """(ids, padding_mask, labels or targets) on the device for the examples at `indices`; seq2seq:
    (ids, padding_mask, decoder input, targets)."""
    ids, mask = pad_batch([split_data["ids"][i] for i in indices], pad_id)
    if "labels" in split_data:
        answers = torch.tensor([split_data["labels"][i] for i in indices])
    else:
        answers, _ = pad_batch([split_data["targets"][i] for i in indices], -100)
    decoder_ids = [pad_batch([split_data["decoder_ids"][i] for i in indices], pad_id)[0]] if "decoder_ids" in split_data else []
    return train.to_device([ids, mask, *decoder_ids, answers], system)


def task_forward(model, batch, task):
    """(logits, loss) of the task's model on a make_task_batch batch."""
    ids, mask, *decoder_ids, answers = batch
    if task == "classify":
        return model(ids, padding_mask=mask, labels=answers)
    return model(ids, *decoder_ids, answers, padding_mask=mask)  # sft: (ids, targets); seq2seq: (ids, decoder ids, targets)


def task_loss(model, batch, task, autocast):
    with autocast:
        return task_forward(model, batch, task)[1]


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def evaluate_examples(model, data, cfg, system, n_classes=0, splits=("train", "val")):
    """val and test: every example, shared among the ranks; train: eval_iters fixed batches. Loss per
    example (classify) or per response or output token (sft, seq2seq), plus accuracy and, for >2 classes, macro-F1."""
    model = getattr(model, "module", model)  # past DDP: ranks may evaluate different numbers of batches
    model.eval()
    out = {}
    pad = data["pad_id"]
    for split in splits:
        n = len(data[split]["ids"])
        # val and test in order of length, so a batch pads little (the sums do not depend on the order)
        order = epoch_order(n, cfg.seed, -1)[:cfg.eval_iters * cfg.batch_size] if split == "train" \
            else sorted(range(n), key=lambda i: len(data[split]["ids"][i]))
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        loss_sum, count = 0.0, 0
        confusion = torch.zeros(max(n_classes, 1), max(n_classes, 1), dtype=torch.float64)  # (true, predicted)
        for indices in batches[system.rank::system.world_size]:
            batch = make_task_batch(data[split], indices, pad, system)
            answers = batch[-1]
            with system.autocast:
                logits, loss = task_forward(model, batch, "classify" if n_classes else cfg.task)
                if n_classes:
                    confusion.index_put_((answers.cpu(), logits.argmax(-1).cpu()), torch.ones(len(indices), dtype=torch.float64),
                                         accumulate=True)
                    weight = len(indices)
                else:
                    weight = int((answers != -100).sum())
            loss_sum, count = loss_sum + loss.item() * weight, count + weight
        totals = train.all_reduce_mean([loss_sum, count, *confusion.flatten().tolist()], system)
        totals = [t * system.world_size for t in totals]  # sums over the ranks
        out[f"{split}_loss"] = totals[0] / max(totals[1], 1)
        if n_classes:
            confusion = torch.tensor(totals[2:], dtype=torch.float64).view(n_classes, n_classes)
            out[f"{split}_acc"] = (confusion.diag().sum() / confusion.sum().clamp(min=1)).item()
            out[f"{split}_error"] = 1.0 - out[f"{split}_acc"]  # what select=acc minimises
            if n_classes > 2:
                out[f"{split}_f1"] = macro_f1(confusion)
    if not n_classes and "val" in splits:
        out["val_ppl"] = math.exp(min(out["val_loss"], 50))  # of the response (output) tokens
    model.train()
    return out


def macro_f1(confusion):
    """Mean over classes of F1 = 2TP / (2TP + FP + FN); classes absent from labels and predictions are left out."""
    tp = confusion.diag()
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    return (2 * tp / (2 * tp + fp + fn).clamp(min=1))[present].mean().item()


@torch.no_grad()
def predict(classifier, tok, sentences, names, block_size, system, redact_kinds=()):
    """(label name, probability) per sentence, and print them, each sentence with the personal data of
    `redact_kinds` redacted (--safe: what a classifier prints is its input, so that is what safe guards)."""
    classifier.eval()
    stats = Counter()
    rows = classification_inputs(tok, sentences, block_size, classifier.config.causal, stats)
    ids, mask = train.to_device(list(pad_batch(rows, tok.special_ids["[PAD]"])), system)
    with system.autocast:
        logits, _ = classifier(ids, padding_mask=mask)
    probs = F.softmax(logits.float(), dim=-1)
    results, found = [], Counter()
    for sentence, p in zip(sentences, probs):
        best = int(p.argmax())
        results.append((names[best], float(p[best])))
        print(f"{names[best]}\t{float(p[best]):.3f}\t{redact(sentence, redact_kinds, found) if redact_kinds else sentence}")
    if redact_kinds:
        print(f"safe: {describe_redactions(found)}")
    return results


# -----------------------------------------------------------------------------

def check_config(cfg):
    problems = []
    if cfg.task not in ("lm", "classify", "sft", "seq2seq"):
        problems.append(f"task={cfg.task!r} is not one of lm, classify, sft, seq2seq")
    if cfg.pool not in ("auto", "first", "mean", "last"):
        problems.append(f"pool={cfg.pool!r} is not one of auto, first, mean, last")
    if cfg.lora_rank < 0 or cfg.freeze_layers < 0:
        problems.append("lora_rank and freeze_layers must be 0 or more")
    if cfg.lora_rank and cfg.freeze_layers:
        problems.append("lora_rank and freeze_layers are alternatives: LoRA already freezes every pretrained weight")
    if cfg.fsdp and (cfg.task == "classify" or cfg.lora_rank):
        problems.append("fsdp=True works for full lm/sft finetuning only; a classifier or LoRA trains with DDP")
    if cfg.predict and cfg.task != "classify":
        problems.append("predict is for task=classify")
    if cfg.select not in ("auto", "acc", "loss"):
        problems.append(f"select={cfg.select!r} is not one of auto, acc, loss")
    if cfg.select == "acc" and cfg.task != "classify":
        problems.append(f"select=acc needs task=classify ({cfg.task} has no accuracy); use select=loss")
    if not 0 < cfg.layer_lr_decay <= 1 or cfg.unfreeze_every < 0:
        problems.append(f"layer_lr_decay={cfg.layer_lr_decay} must be in (0, 1] and unfreeze_every={cfg.unfreeze_every} 0 or more")
    if (cfg.layer_lr_decay != 1 or cfg.unfreeze_every) and cfg.task != "classify":
        problems.append("layer_lr_decay and unfreeze_every are ULMFiT's classifier recipe: they need task=classify")
    if not 0 < cfg.val_fraction < 1:
        problems.append(f"val_fraction={cfg.val_fraction} must be between 0 and 1")
    if problems:
        raise ConfigError("; ".join(problems))


def make_task(cfg, gpt, tok, system):
    """What train.Trainer needs of the task (batch, loss, evaluate, tokens_per_micro_batch), plus `test`,
    which evaluates the test split where there is one (else None), and the class `names`."""
    if cfg.task == "lm":  # train.py's own batches and evaluation, on the new dataset
        data_dir = train.find_dataset(cfg.dataset, system)
        if load_tokenizer(data_dir).spec() != tok.spec():
            raise ConfigError(f"data/{cfg.dataset} was tokenized with another tokenizer than {cfg.init_from}'s "
                              f"({tok.kind}); prepare it with --tokenizer={tok.kind}")
        meta = read_meta(data_dir)
        check_bins(data_dir, meta, cfg.block_size)  # one file or shards, as train.py reads them
        batch_fn = train.make_batch_fn(cfg, data_dir, meta, tok, system)
        return SimpleNamespace(batch=batch_fn, loss=lambda m, batch: train.lm_loss(m, batch, system.autocast),
                               evaluate=lambda m: train.evaluate_lm(m, batch_fn, cfg, system), test=None, names=[],
                               select="val_loss",
                               tokens_per_micro_batch=cfg.batch_size * cfg.block_size)
    loaders = {"classify": lambda: load_classification(cfg, tok, gpt.config.causal), "sft": lambda: load_sft(cfg, tok),
               "seq2seq": lambda: load_seq2seq(cfg, tok)}
    data = loaders[cfg.task]()
    data["pad_id"] = pad_id = tok.special_ids["[PAD]"]
    data["train"] = subset(data["train"], cfg.train_examples, cfg.seed)
    names = data.get("names", [])
    n_train = len(data["train"]["ids"])
    if system.master:
        print(f"{cfg.task} data: {n_train} train, {len(data['val']['ids'])} val examples"
              + (f", classes {names}" if names else "") + "".join(f"; {k} {v}" for k, v in data["stats"].items() if v))
    return SimpleNamespace(
        batch=lambda i: make_task_batch(data["train"], batch_indices(i, cfg.batch_size, n_train, cfg.seed), pad_id, system),
        loss=lambda m, batch: task_loss(m, batch, cfg.task, system.autocast),
        evaluate=lambda m: evaluate_examples(m, data, cfg, system, len(names)),
        test=(lambda m: evaluate_examples(m, data, cfg, system, len(names), splits=("test",))) if "test" in data else None,
        names=names, select="val_error" if cfg.task == "classify" and cfg.select != "loss" else "val_loss",
        start_is_candidate=cfg.task != "classify",  # the checkpoint is a trained classifier, not the random head of step 0
        tokens_per_micro_batch=cfg.batch_size * round(sum(map(len, data["train"]["ids"])) / n_train))


def build_task_model(cfg, gpt, names, source):
    """The model to train: the body, with a head for classify, adapters or frozen layers as asked."""
    raw = gpt
    if cfg.task == "classify":
        pool = cfg.pool if cfg.pool != "auto" else ("last" if gpt.config.causal else "mean")
        dropout = cfg.dropout if cfg.head_dropout < 0 else cfg.head_dropout
        raw = Classifier(gpt, len(names), pool, dropout, cfg.layer_lr_decay, cfg.unfreeze_every)
        if source is not None and source.get("classes") == names:
            raw.head.load_state_dict(source["classifier"])  # a classifier's checkpoint brings its head along
    if cfg.lora_rank:
        add_lora(gpt, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    elif cfg.freeze_layers:
        freeze_first_layers(gpt, cfg.freeze_layers)
    return raw


def predict_with_checkpoint(cfg, gpt, tok, checkpoint, system):
    """--predict: the classifier saved by a classify run, on the given sentences."""
    if checkpoint is None or "classifier" not in checkpoint:
        raise ConfigError(f"predict needs a classifier: set init_from to the out_dir of a classify run, not {cfg.init_from!r}")
    classifier = Classifier(gpt, len(checkpoint["classes"]), checkpoint["pool"], 0.0)
    classifier.head.load_state_dict(checkpoint["classifier"])
    text = file_or_text(cfg.predict, "predict")
    sentences = [s.strip() for s in (text.splitlines() if cfg.predict.startswith("FILE:") else text.split("|")) if s.strip()]
    return predict(classifier.to(system.device), tok, sentences, checkpoint["classes"], gpt.config.block_size, system,
                   pii_kinds(cfg.safe_phone) if cfg.safe else ())


def start_finetuning(cfg, system, checkpoint=None):
    """(run, task, tokenizer): the pretrained model with the task's head, adapters or frozen layers, its data,
    and the run's state (train.start_run), resumed exactly for init_from=resume (`checkpoint`: the one
    train.resume_config loaded)."""
    tok = None
    if cfg.init_from == "scratch":
        if cfg.block_size < 1:
            raise ConfigError("init_from=scratch needs a block_size (the context of the new model)")
        tok = build_tokenizer("gpt2") if cfg.tokenizer == "gpt2" else load_tokenizer(train.find_dataset(cfg.tokenizer, system))
    gpt, tok, checkpoint = train.start_model(cfg, tok, cfg.causal, checkpoint, seq2seq=cfg.task == "seq2seq")
    resume = cfg.init_from == "resume"
    if resume and checkpoint["config"].get("task") != cfg.task:
        raise ConfigError(f"{cfg.out_dir} was trained with task={checkpoint['config'].get('task')!r}, not {cfg.task!r}")
    if cfg.task == "sft" and not gpt.config.causal:
        raise ConfigError("sft teaches a model to generate, but init_from is a masked-LM encoder: start from a clm model")
    cfg.block_size = gpt.config.block_size
    cfg.objective = "span" if gpt.config.n_decoder_layer else "clm" if gpt.config.causal else "mlm"  # train.py's helpers read it
    train.check_config(cfg, system)
    task = make_task(cfg, gpt, tok, system)
    raw_model = build_task_model(cfg, gpt, task.names, checkpoint).to(system.device)
    train.seed_everything(cfg.seed + system.rank)  # then each rank its own dropout randomness
    trainable, total = count_parameters(raw_model)
    if system.master:
        how = (f"LoRA rank {cfg.lora_rank} on {cfg.lora_targets}" if cfg.lora_rank else
               f"embeddings and first {cfg.freeze_layers} layers frozen" if cfg.freeze_layers else "full finetuning")
        kind = "encoder-decoder" if gpt.config.n_decoder_layer else "causal" if gpt.config.causal else "encoder"
        print(f"{cfg.task} from {cfg.init_from}: {kind} model"
              + (f", pooling {raw_model.pool}" if cfg.task == "classify" else "")
              + f", {how}: trainable parameters {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    run = train.start_run(cfg, system, raw_model, checkpoint if resume else None,
                          full_model_state(checkpoint, raw_model) if resume else None)

    def checkpoint_extra():  # a plain full finetune of lm/sft needs nothing beyond train.py's checkpoint
        extra = {"tokenizer": tok.spec(), "task": cfg.task}
        if cfg.task == "classify":
            extra |= {"classes": task.names, "pool": raw_model.pool}
        return extra | (task_state(raw_model) if cfg.task == "classify" or cfg.lora_rank else {})

    task.checkpoint_extra, task.sample = checkpoint_extra, None
    return run, task, tok


def evaluate_test_split(cfg, system, run, task):
    """The test split, once, on the checkpoint that val chose (by `select`: dev accuracy for a classifier)."""
    best = load_checkpoint(cfg.out_dir)
    run.raw_model.load_state_dict(full_model_state(best, run.raw_model))
    record = {"iter": best["iter_num"], **task.test(run.model)}
    if system.master:
        train.append_log(cfg.out_dir, record)
        print(f"test split, checkpoint of step {best['iter_num']}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "iter"))


@script_main
def main(argv=None):
    explicit = set()
    cfg = configure(DEFAULTS, argv, explicit=explicit)
    system = train.setup_system(cfg)
    try:
        checkpoint = train.resume_config(cfg, explicit, system) if cfg.init_from == "resume" and not cfg.predict else None
        check_config(cfg)
        train.seed_everything(cfg.seed)  # the same new weights (head, adapters) on every rank
        if cfg.predict:
            gpt, tok, checkpoint = train.start_model(cfg)
            return predict_with_checkpoint(cfg, gpt, tok, checkpoint, system)
        run, task, tok = start_finetuning(cfg, system, checkpoint)
        cpu0, t0 = time.process_time(), time.time()
        metrics = train.Trainer(cfg, system, run, task).fit()
        if system.master:
            print(f"finished at step {run.state['iter_num']}, best {task.select} {run.state['best_val_loss']:.4f}; "
                  f"{time.time() - t0:.0f}s wall, {time.process_time() - cpu0:.0f}s CPU (this process); last eval: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if task.test and not cfg.eval_only and os.path.exists(checkpoint_path(cfg.out_dir)):
            evaluate_test_split(cfg, system, run, task)
        system.done = True
    finally:
        train.teardown(system)


if __name__ == "__main__":
    main()
