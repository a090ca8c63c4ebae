"""
One Transformer, read top to bottom: a GPT (causal, autoregressive) or a BERT-style encoder
(bidirectional, masked LM), with GPT-2's architecture by default and LLaMA's options
(RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied head) behind config switches.
Also here: generation with a preallocated KV cache, MFU, and checkpoint I/O.

References: GPT-2 (Radford et al. 2019), nanoGPT's model.py, BERT (Devlin et al. 2019),
RoFormer (Su et al. 2021), LLaMA (Touvron et al. 2023), GQA (Ainslie et al. 2023).
"""

import glob
import inspect
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024      # longest sequence the model sees
    vocab_size: int = 50257     # ids the tokenizer can produce; embeddings are padded to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0          # 0 = n_head; fewer = grouped-query attention (each kv head serves n_head/n_kv_head queries)
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # biases in Linears and LayerNorms (GPT-2: True; LLaMA: False)
    causal: bool = True         # True: GPT; False: bidirectional encoder for masked-LM
    pos: str = "learned"        # learned (GPT-2, BERT) | rope (LLaMA)
    rope_theta: float = 10000.0
    norm: str = "layernorm"     # layernorm | rmsnorm
    norm_eps: float = 1e-5
    mlp: str = "gelu"           # gelu (4x, GPT-2) | swiglu (LLaMA)
    mlp_hidden: int = 0         # 0 = 4*n_embd for gelu, LLaMA's rounded 8/3*n_embd for swiglu
    mlp_multiple_of: int = 64   # swiglu hidden size is rounded up to this (LLaMA 7B uses 256)
    tie_embeddings: bool = True
    mlm_transform: bool = False  # BERT's dense + GELU + LayerNorm before the MLM output layer

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            problems.append(f"rope needs an even head size, got n_embd/n_head={self.n_embd // self.n_head}")
        for key, allowed in (("pos", ("learned", "rope")), ("norm", ("layernorm", "rmsnorm")), ("mlp", ("gelu", "swiglu"))):
            if getattr(self, key) not in allowed:
                problems.append(f"{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if problems:
            raise ValueError("bad model config: " + "; ".join(problems))

    @property
    def padded_vocab_size(self):  # a multiple of 64 keeps the output matmul on fast kernels
        return (self.vocab_size + 63) // 64 * 64

    @property
    def head_size(self):
        return self.n_embd // self.n_head

    @property
    def hidden_size(self):
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.n_embd
        hidden = int(2 * 4 * self.n_embd / 3)  # LLaMA: 2/3 of 4x, so SwiGLU's three matrices cost what GELU's two do
        return self.mlp_multiple_of * ((hidden + self.mlp_multiple_of - 1) // self.mlp_multiple_of)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rope_tables(head_size, length, theta):
    """cos and sin of RoPE's rotation angles, (length, head_size), in the rotate-half layout HF LLaMA uses."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs): pairs are (i, i + hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each (i, i + hs/2) pair of x (B, nh, T, hs) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).type_as(x)


class KVCache:
    """Keys and values of one layer, preallocated for the whole generation: (B, n_kv_head, max_len, hs)."""

    def __init__(self, batch_size, n_kv_head, max_len, head_size, dtype, device):
        self.k = torch.zeros(batch_size, n_kv_head, max_len, head_size, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, pos, k, v):
        """Store k, v (B, nkv, T, hs) at positions pos..pos+T-1; return everything cached so far."""
        T = k.size(2)
        self.k[:, :, pos:pos + T] = k
        self.v[:, :, pos:pos + T] = v
        return self.k[:, :, :pos + T], self.v[:, :, :pos + T]


class Attention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, config.head_size
        self.causal = config.causal
        # query, key and value projections in one matmul: n_head + 2 * n_kv_head heads
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_size, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.capture = False    # set by GPT.attention_maps: also compute and keep the probabilities
        self.attn_probs = None  # (B, nh, T, T_keys) after a capturing forward

    def forward(self, x, rope=None, padding_mask=None, cache=None, pos=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split([C, self.n_kv_head * self.head_size, self.n_kv_head * self.head_size], dim=2)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)     # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(pos, k, v)  # (B, nkv, pos+T, hs)
        mask, is_causal = self.attention_mask(T, k.size(2), pos, padding_mask, x.device)
        if self.capture:
            y = self.attention_with_probs(q, k, v, mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                               dropout_p=self.dropout if self.training else 0.0,
                                               enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))

    def attention_mask(self, T, T_keys, pos, padding_mask, device):
        """(mask, is_causal) for SDPA. Queries are positions pos..pos+T-1, keys 0..T_keys-1.
        padding_mask (B, T_keys) is True at real tokens; padded keys are never attended to."""
        causal = self.causal and T > 1  # one new query may look at every cached key
        if padding_mask is None and (not causal or pos == 0):
            return None, causal
        mask = torch.ones(T, T_keys, dtype=torch.bool, device=device)
        if causal:
            mask = mask.tril(diagonal=pos)  # query i sees keys up to pos + i
        if padding_mask is not None:
            mask = mask & padding_mask[:, None, None, :]  # (B, 1, T, T_keys)
        return mask, False

    def attention_with_probs(self, q, k, v, mask, is_causal):
        """The same attention written out, keeping softmax(q k^T / sqrt(hs)) for inspection."""
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_size)  # (B, nh, T, T_keys)
        if is_causal:
            mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att.float(), dim=-1).type_as(q)
        self.attn_probs = att.detach()
        return att @ v


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = config.hidden_size
        # SwiGLU computes its gate and its value in one matmul: silu(x W_gate) * (x W_up)
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's tanh approximation, so HF weights give HF logits
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = Attention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, padding_mask=None, cache=None, pos=0):
        x = x + self.attn(self.ln_1(x), rope, padding_mask, cache, pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.grad_checkpoint = False  # recompute each block's activations in backward to save memory
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rope_tables(config.head_size, config.block_size, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if config.mlm_transform:  # BERT's prediction-head transform (Devlin et al. 2019, App. A)
            self.mlm_transform = nn.Sequential(nn.Linear(config.n_embd, config.n_embd), nn.GELU(approximate="tanh"),
                                               nn.LayerNorm(config.n_embd, eps=config.norm_eps))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:  # one matrix reads tokens in and writes them out (Press & Wolf 2017)
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), as each block adds two of them to the stream
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameters, without the position embeddings (they do no matmul work) when non_embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    # --- the network ------------------------------------------------------------------------------

    def hidden_states(self, idx, padding_mask=None, caches=None, pos=0):
        """Final-norm hidden states (B, T, C) for token ids idx (B, T) at positions pos..pos+T-1."""
        B, T = idx.size()
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of {pos + T} tokens is longer than block_size={self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(torch.arange(pos, pos + T, device=idx.device))
        else:
            rope = (self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T])
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            cache = caches[i] if caches is not None else None
            if self.grad_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, padding_mask, use_reentrant=False)
            else:
                x = block(x, rope, padding_mask, cache, pos)
        return self.transformer.ln_f(x)

    def head(self, h):
        """Logits over the padded vocabulary for hidden states h (..., C)."""
        if self.config.mlm_transform:
            h = self.mlm_transform(h)
        return self.lm_head(h)

    def forward(self, idx, targets=None, padding_mask=None):
        """
        Without targets: logits (B, T, V). With targets (B, T), -100 where there is nothing to predict:
        (logits, mean cross-entropy). An encoder computes the output layer only at the predicted
        positions (BERT's masked tokens), so its logits are (N, V) for the N targets.
        """
        h = self.hidden_states(idx, padding_mask)
        if targets is None:
            return self.head(h), None
        if not self.config.causal:  # sparse prediction: ~15% of positions need the big vocab matmul
            chosen = targets != -100
            h, targets = h[chosen], targets[chosen]
        logits = self.head(h)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @staticmethod
    def pool(h, padding_mask=None, how="first"):
        """One vector per sequence from hidden states h (B, T, C): the first token ([CLS] for an
        encoder), the mean over real tokens, or the last real token (what a causal model has read)."""
        if padding_mask is None:
            padding_mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        if how == "first":
            return h[:, 0]
        if how == "mean":
            m = padding_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1)
        if how == "last":
            last = padding_mask.long().sum(1).clamp(min=1) - 1  # right padding: index of the last real token
            return h[torch.arange(h.size(0), device=h.device), last]
        raise ValueError(f"pooling {how!r} is not one of first, mean, last")

    @torch.no_grad()
    def attention_maps(self, idx, padding_mask=None):
        """Attention probabilities of every layer, a list of (B, nh, T, T), from one forward pass."""
        blocks = self.transformer.h
        for b in blocks:
            b.attn.capture = True
        try:
            self.hidden_states(idx, padding_mask)
            return [b.attn.attn_probs for b in blocks]
        finally:
            for b in blocks:
                b.attn.capture, b.attn.attn_probs = False, None

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. to finetune a 1024-context model at 256)."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        else:
            self.rope_cos, self.rope_sin = self.rope_cos[:block_size], self.rope_sin[:block_size]

    # --- training helpers -------------------------------------------------------------------------

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; only matrices (>= 2-D: Linear weights, embeddings) are decayed, not biases or norms."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token: 6N for the matmuls plus attention's 12*L*H*hs*T (PaLM, App. B)."""
        c, T = self.config, seq_len or self.config.block_size
        return 6 * self.get_num_params() + 12 * c.n_layer * c.n_head * c.head_size * T

    def estimate_mfu(self, tokens_per_iter, dt, device, dtype, seq_len=None):
        """Model FLOPs utilisation: achieved FLOP/s over the device's peak; None where the peak is unknown."""
        peak = device_peak_flops(device, dtype)
        if peak is None or dt <= 0:
            return None
        return self.flops_per_token(seq_len) * tokens_per_iter / dt / peak

    # --- generation -------------------------------------------------------------------------------

    def new_caches(self, batch_size, max_len, dtype=None):
        c = self.config
        dtype = dtype or self.lm_head.weight.dtype
        return [KVCache(batch_size, c.n_kv_head, max_len, c.head_size, dtype, self.lm_head.weight.device)
                for _ in range(c.n_layer)]

    def next_token_logits(self, idx, caches=None, pos=0):
        """Logits (B, vocab_size) for the token after idx (B, T); with caches, idx starts at `pos`."""
        h = self.hidden_states(idx, caches=caches, pos=pos)
        return self.head(h[:, -1])[:, :self.config.vocab_size].float()

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        stop_token=None, use_kv_cache=True, generator=None, suppress_tokens=()):
        """
        Yield the next token of every sequence, a (B,) tensor per step. With the KV cache: one
        forward over the prompt (prefill), then one token at a time, each step attending to the
        cached keys and values. Without it: the whole (cropped) context again at every step.
        Sequences that emitted stop_token keep emitting it; generation ends when all have.
        suppress_tokens are never sampled (e.g. [MASK], which only an encoder's input contains).
        """
        if not self.config.causal:
            raise ValueError("this is a masked-LM encoder; it fills [MASK] tokens instead of generating text")
        block = self.config.block_size
        seq = idx if idx.size(1) <= block else idx[:, -block:]
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        caches, pos = None, 0
        for _ in range(max_new_tokens):
            if not use_kv_cache:
                logits = self.next_token_logits(seq[:, -block:])
            elif caches is None or pos == block:  # prefill, or the cache is full: restart from the recent half
                context = seq if caches is None else seq[:, -(block // 2):]
                caches = self.new_caches(seq.size(0), block)
                logits, pos = self.next_token_logits(context, caches, 0), context.size(1)
            else:
                logits = self.next_token_logits(seq[:, -1:], caches, pos)
                pos += 1
            if suppress_tokens:
                logits[:, list(suppress_tokens)] = float("-inf")
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if stop_token is not None:
                nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
                done |= nxt == stop_token
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            yield nxt
            if stop_token is not None and bool(done.all()):
                return

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, **kwargs):
        """idx (B, T) followed by up to max_new_tokens generated tokens, (B, T + n)."""
        new = list(self.generate_tokens(idx, max_new_tokens, **kwargs))
        return torch.cat([idx] + [t[:, None] for t in new], dim=1) if new else idx


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token id per row of logits (B, V): greedy at temperature 0, else sampled from the
    softmax restricted to the top_k largest and to the smallest set holding top_p of the mass."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def top_p_filter(logits, top_p):
    """Nucleus sampling (Holtzman et al. 2020): keep the most likely tokens until their probability
    reaches top_p (the token that crosses it included), mask the rest to -inf."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = cum - F.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token already enough
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


# -----------------------------------------------------------------------------
# device peaks for MFU: dense bf16/fp16 tensor-core FLOP/s, and TF32 for float32 (vendor data sheets)

PEAK_FLOPS = {"A100": (312e12, 156e12), "H100": (989e12, 494e12), "H200": (989e12, 494e12),
              "H800": (989e12, 494e12), "L40S": (362e12, 183e12), "A10G": (125e12, 62.5e12)}


def device_peak_flops(device, dtype):
    """Peak FLOP/s of this accelerator for dtype, or None (CPUs, and GPUs not in the table)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key, (half, tf32) in PEAK_FLOPS.items():
        if key in name:
            return tf32 if dtype in ("float32", torch.float32) else half
    return None


# -----------------------------------------------------------------------------
# checkpoints: written atomically, loaded as data only (weights_only=True: a checkpoint never runs code)

class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile (_orig_mod.) and DDP (module.) add to parameter names."""
    return {re.sub(r"^(_orig_mod\.|module\.)+", "", k).replace("._orig_mod.", "."): v for k, v in state_dict.items()}


def checkpoint_path(out_dir_or_file):
    return out_dir_or_file if out_dir_or_file.endswith(".pt") else os.path.join(out_dir_or_file, "ckpt.pt")


def save_checkpoint(checkpoint, out_dir, keep_last=1):
    """
    Write out_dir/ckpt.pt so that a crash at any moment leaves the old file or the new one: save to
    a temporary name, fsync, rename. With keep_last > 1 the checkpoint is also kept as
    ckpt-<iter>.pt (a hard link, no extra copy) and only the newest keep_last of those stay.
    """
    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, "ckpt.pt")
    tmp = final + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_last > 1:
        numbered = os.path.join(out_dir, f"ckpt-{checkpoint.get('iter_num', 0):07d}.pt")
        if os.path.exists(numbered):
            os.remove(numbered)
        os.link(tmp, numbered)
        for old in sorted(glob.glob(os.path.join(out_dir, "ckpt-*.pt")))[:-keep_last]:
            os.remove(old)
    os.replace(tmp, final)
    return final


def _loads_cleanly(path):
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception:  # a probe: any failure means "not a good checkpoint"
        return False


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint as plain data; a truncated, corrupt or code-carrying file is a one-line error."""
    path = checkpoint_path(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train one first, or check --out_dir/--init_from")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it holds Python objects, not plain tensors and values, "
                              f"so loading it could run code ({str(e).splitlines()[0][:120]}). "
                              f"Only load checkpoints you trust, or convert them to safetensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        others = sorted(glob.glob(os.path.join(os.path.dirname(path), "ckpt-*.pt")), reverse=True)
        good = next((p for p in others if _loads_cleanly(p)), None)
        hint = f"the last good checkpoint is {good}" if good else "no other checkpoint was found in that folder"
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}); {hint}") from None


def model_from_checkpoint(checkpoint, device="cpu"):
    """Rebuild the GPT a checkpoint was saved from, with its weights."""
    model = GPT(GPTConfig.from_dict(checkpoint["model_args"]))
    missing, unexpected = model.load_state_dict(clean_state_dict(checkpoint["model"]), strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight") or not model.config.tie_embeddings]:
        raise CheckpointError(f"checkpoint does not match its model_args: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device)
