"""
The optimizers train.py builds, AdamW over every parameter or Muon for the hidden matrices with AdamW
for the rest, and the learning-rate schedule that drives them.

Muon (Jordan et al. 2024, kellerjordan.github.io/posts/muon; torch.optim.Muon) steps each 2-D weight
by its Nesterov momentum made (nearly) semi-orthogonal with a few Newton-Schulz iterations: every
direction of the update moves by about the same amount, so directions that the raw gradient barely
touches learn as fast as the dominant ones. It is meant for the matrices inside the Transformer blocks;
embeddings, the output head, norms and biases keep AdamW, as in modded-nanogpt and nanochat. On tiny
Shakespeare it takes the default model further in the same number of steps (README, "Tuning").
"""

import math

import torch

from configurator import ConfigError


class Optimizers:
    """Several torch optimizers stepped as one, so that the training loop and GradScaler (which read
    param_groups and call step) see one object. Checkpoints save and load the tuple `optimizers` with
    torch's get_state_dict/set_state_dict, which take several optimizers (and shard them under FSDP)."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def hidden_matrices(raw_model):
    """The 2-D trainable weights inside the Transformer blocks: the encoder's or GPT's, and an encoder-decoder's
    decoder blocks (a finetuning Classifier holds its GPT as .gpt)."""
    model = getattr(raw_model, "gpt", raw_model)
    stacks = [model.transformer.h] + ([model.decoder.h] if hasattr(model, "decoder") else [])
    return [p for blocks in stacks for p in blocks.parameters() if p.requires_grad and p.dim() == 2]


def make_optimizer(cfg, raw_model, device_type):
    """
    optimizer='adamw': AdamW over every trainable parameter (GPT.configure_optimizers: matrices decayed,
    biases and norms not). optimizer='muon': torch.optim.Muon for hidden_matrices at muon_lr, with its
    own shape adjustment (lr * sqrt(max(1, rows/cols)), Jordan's "original") and decoupled weight decay
    (each step multiplies by 1 - lr * weight_decay); AdamW at learning_rate for the rest. The schedule
    multiplies every group's lr by the same factor: each group's lr_scale is its peak / learning_rate.
    """
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, betas, device_type)
    if cfg.optimizer != "muon":
        raise ConfigError(f"optimizer={cfg.optimizer!r} is not adamw or muon")
    matrices = hidden_matrices(raw_model)
    in_muon = {id(p) for p in matrices}
    rest = [p for p in raw_model.parameters() if p.requires_grad and id(p) not in in_muon]
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=cfg.learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))
    muon = torch.optim.Muon([{"params": matrices, "lr_scale": cfg.muon_lr / cfg.learning_rate}], lr=cfg.muon_lr,
                            weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum, nesterov=True)
    return Optimizers(adamw, muon)


def schedule_step(it, elapsed, cfg):
    """The step the schedule is at: `it`, or with a time budget (max_time > 0) the same share of max_iters as
    the share of max_time spent, if that is further along. A slower machine then warms up and decays in fewer
    steps, and reaches min_lr exactly when the budget is spent; a step-capped run reproduces on any machine."""
    if cfg.max_time > 0:
        return max(it, min(elapsed / cfg.max_time, 1.0) * cfg.max_iters)
    return it


def get_lr(it, cfg):
    """Linear warmup (non-zero from step 0), then cosine decay to min_lr at lr_decay_iters."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)
