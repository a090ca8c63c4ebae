"""
One Transformer, read top to bottom: a GPT (causal, autoregressive), a BERT-style encoder
(bidirectional, masked LM) or, from the same blocks, a T5-style encoder-decoder (the encoder's stack
read by a causal decoder through cross-attention), with GPT-2's architecture by default and LLaMA's
options (RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied head) behind config switches.
Also here: generation with a preallocated KV cache, MFU and checkpoint I/O; Hugging Face weights are in hf.py.

References: GPT-2 (Radford et al. 2019), nanoGPT's model.py, BERT (Devlin et al. 2019),
RoFormer (Su et al. 2021), LLaMA (Touvron et al. 2023), GQA (Ainslie et al. 2023), the Transformer
(Vaswani et al. 2017) and T5 (Raffel et al. 2020) for the encoder-decoder.
"""

import glob
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import ConfigError, NanorootsError
from dataset import atomic_file
from tokenizer import tokenizer_from_spec


MAX_ROPE_TABLE = 2**27  # block_size * head_size of a RoPE model: two float32 tables of 512 MiB each at most;
                        # LLaMA-3.1's 131,072 positions at head size 128 are 2**24
MIN_SIZES = dict(block_size=1, vocab_size=1, n_layer=1, n_head=1, n_kv_head=1, n_embd=1, mlp_hidden=0, mlp_multiple_of=1,
                 n_decoder_layer=0)
CHOICES = dict(pos=("learned", "rope"), norm=("layernorm", "rmsnorm"), mlp=("gelu", "swiglu"))


def has_type(value, kind):
    """value is a kind (an int where a float is expected is fine; a bool is not an int here)."""
    return isinstance(value, bool) == (kind is bool) and (isinstance(value, kind) or (kind is float and isinstance(value, int)))


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
    qk_norm: bool = False       # RMS-normalise each head's queries and keys before attention (Dehghani et al. 2023;
                                # modded-nanogpt, nanochat); no Hugging Face layout holds it
    mlp_multiple_of: int = 64   # swiglu hidden size is rounded up to this (LLaMA 7B uses 256)
    tie_embeddings: bool = True
    mlm_transform: bool = False  # BERT's dense + GELU + LayerNorm before the MLM output layer
    n_decoder_layer: int = 0    # > 0: an encoder-decoder (T5): n_layer encoder blocks (causal=False), this many decoder blocks

    def __post_init__(self):
        """Every field is checked before anything is allocated: model_args come from checkpoints and config.json
        files, which are data. Types first, then ranges, then how the sizes divide."""
        problems = [f"{f.name}={getattr(self, f.name)!r} must be {type(f.default).__name__}" for f in fields(self)
                    if not has_type(getattr(self, f.name), type(f.default))]
        if not problems:
            self.n_kv_head = self.n_kv_head or self.n_head
            problems = [f"{k}={getattr(self, k)} must be at least {low}" for k, low in MIN_SIZES.items() if getattr(self, k) < low]
            problems += [f"{k}={getattr(self, k)!r} is not one of {', '.join(v)}" for k, v in CHOICES.items() if getattr(self, k) not in v]
            if not 0 <= self.dropout < 1:
                problems.append(f"dropout={self.dropout} must be in [0, 1)")
            if self.rope_theta <= 0 or self.norm_eps <= 0:
                problems.append(f"rope_theta={self.rope_theta} and norm_eps={self.norm_eps} must be positive")
        if problems:
            raise ConfigError("bad model config: " + "; ".join(problems))
        if self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        elif self.n_head % self.n_kv_head:
            problems.append(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}")
        elif self.pos == "rope" and self.head_size % 2:
            problems.append(f"rope needs an even head size, got n_embd/n_head={self.head_size}")
        elif self.pos == "rope" and self.block_size * self.head_size > MAX_ROPE_TABLE:
            # no weight pins a RoPE model's block_size, so it is bounded: the cos/sin tables stay under 1 GiB
            problems.append(f"block_size={self.block_size} is too long for RoPE tables of head size {self.head_size} "
                            f"(at most {MAX_ROPE_TABLE // self.head_size:,} positions)")
        if self.n_decoder_layer and self.causal:
            problems.append(f"n_decoder_layer={self.n_decoder_layer} makes an encoder-decoder, whose encoder reads "
                            f"its whole input: set causal=False")
        if problems:
            raise ConfigError("bad model config: " + "; ".join(problems))

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
        if not isinstance(d, dict):
            raise ConfigError(f"model_args must be a dict of GPTConfig fields, got {type(d).__name__}")
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
    """Multi-head self-attention; with cross=True, cross-attention: the queries come from x, the keys and
    values from the encoder's output (memory_kv), as in the original Transformer's decoder."""

    def __init__(self, config, causal=None, cross=False):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, config.head_size
        self.causal = config.causal if causal is None else causal
        self.qk_norm = config.qk_norm
        # query, key and value projections in one matmul: n_head + 2 * n_kv_head heads. Cross-attention
        # projects only its queries here, and the encoder's output to keys and values in c_kv.
        kv_heads = 0 if cross else 2 * config.n_kv_head
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + kv_heads) * config.head_size, bias=config.bias)
        if cross:
            self.c_kv = nn.Linear(config.n_embd, 2 * config.n_kv_head * config.head_size, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.capture = False    # set by GPT.attention_maps: also compute and keep the probabilities
        self.attn_probs = None  # (B, nh, T, T_keys) after a capturing forward

    def forward(self, x, rope=None, padding_mask=None, cache=None, pos=0, memory=None):
        B, T, C = x.size()
        if memory is not None:
            return self.cross_attention(x, memory, padding_mask)
        q, k, v = self.c_attn(x).split([C, self.n_kv_head * self.head_size, self.n_kv_head * self.head_size], dim=2)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)     # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.qk_norm:  # bounded attention logits: a higher learning rate stays stable
            q, k = F.rms_norm(q, (self.head_size,)), F.rms_norm(k, (self.head_size,))
        if cache is not None:
            k, v = cache.update(pos, k, v)  # (B, nkv, pos+T, hs)
        mask, is_causal = self.attention_mask(T, k.size(2), pos, padding_mask, x.device)
        y = self.attend(q, k, v, mask, is_causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))

    def memory_kv(self, memory):
        """Cross-attention's keys and values, each (B, nkv, S, hs), from the encoder's output memory (B, S, C):
        computed once per input, then read by every decoding step (the cross-attention cache)."""
        B, S, _ = memory.size()
        k, v = self.c_kv(memory).view(B, S, 2 * self.n_kv_head, self.head_size).transpose(1, 2).chunk(2, dim=1)
        return k, v

    def cross_attention(self, x, memory, padding_mask):
        """x (B, T, C) attends to memory = memory_kv(encoder output); padding_mask (B, S) is True at the
        encoder's real tokens. No causal mask and no RoPE: every output position may read the whole input."""
        B, T, C = x.size()
        q = self.c_attn(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k, v = memory
        mask, _ = self.attention_mask(T, k.size(2), 0, padding_mask, x.device)
        y = self.attend(q, k, v, mask, False).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, mask, is_causal):
        """softmax(q k^T / sqrt(hs)) v with SDPA's fused kernels, or written out when capturing the probabilities."""
        if self.capture:
            return self.attention_with_probs(q, k, v, mask, is_causal)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              dropout_p=self.dropout if self.training else 0.0,
                                              enable_gqa=self.n_kv_head != self.n_head)

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


class DecoderBlock(nn.Module):
    """A causal Block with cross-attention to the encoder between its self-attention and its MLP
    (Vaswani et al. 2017, Fig. 1; pre-norm as our Block): x + attn, then x + cross_attn, then x + mlp."""

    def __init__(self, config):
        super().__init__()
        self.ln_1, self.attn = make_norm(config), Attention(config, causal=True)
        self.ln_x, self.cross_attn = make_norm(config), Attention(config, causal=False, cross=True)
        self.ln_2, self.mlp = make_norm(config), MLP(config)

    def forward(self, x, memory, rope=None, memory_mask=None, cache=None, pos=0):
        x = x + self.attn(self.ln_1(x), rope, None, cache, pos)
        x = x + self.cross_attn(self.ln_x(x), padding_mask=memory_mask, memory=memory)
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
        if config.mlm_transform:  # BERT's prediction-head transform (Devlin et al. 2019, App. A)
            self.mlm_transform = nn.Sequential(nn.Linear(config.n_embd, config.n_embd), nn.GELU(approximate="tanh"),
                                               nn.LayerNorm(config.n_embd, eps=config.norm_eps))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.make_buffers()
        if config.tie_embeddings:  # one matrix reads tokens in and writes them out (Press & Wolf 2017)
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), as each block adds two of them to the stream
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def make_buffers(self):
        """The buffers computed from the config, which checkpoints do not hold: RoPE's tables, and the
        output's padding bias. The padding columns of the output (a multiple of 64 runs its matmul on
        faster kernels) are no tokens: a -inf bias there gives them no probability, so the loss is over
        the real vocabulary, at no cost (the add is fused into the matmul; slicing first would copy)."""
        c = self.config
        if c.pos == "rope":
            cos, sin = rope_tables(c.head_size, c.block_size, c.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        n_pad = c.padded_vocab_size - c.vocab_size
        self.register_buffer("vocab_bias", torch.cat([torch.zeros(c.vocab_size), torch.full((n_pad,), float("-inf"))]),
                             persistent=False)

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

    def embed(self, idx, pos, stack, what="sequence"):
        """Token embeddings (B, T, C) of idx (B, T) at positions pos..pos+T-1, with the learned positions of
        `stack` (its wpe) added, or RoPE's tables for its attention: (x, rope or None)."""
        T = idx.size(1)
        if pos + T > self.config.block_size:
            raise ValueError(f"{what} of {pos + T} tokens is longer than block_size={self.config.block_size}")
        x = self.transformer.wte(idx)
        if self.config.pos == "learned":
            return x + stack.wpe.weight[pos:pos + T], None  # a slice of the table, no index tensor
        return x, (self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T])

    def hidden_states(self, idx, padding_mask=None, caches=None, pos=0):
        """Final-norm hidden states (B, T, C) for token ids idx (B, T) at positions pos..pos+T-1."""
        x, rope = self.embed(idx, pos, self.transformer)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            cache = caches[i] if caches is not None else None
            if self.grad_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, padding_mask, use_reentrant=False)
            else:
                x = block(x, rope, padding_mask, cache, pos)
        return self.transformer.ln_f(x)

    def head(self, h, padded=False):
        """Logits (..., vocab_size) for hidden states h (..., C); padded: all padded_vocab_size
        columns, the padding ones -inf (what the loss reads)."""
        if self.config.mlm_transform:
            h = self.mlm_transform(h)
        logits = F.linear(h, self.lm_head.weight, self.vocab_bias.to(h.dtype))
        return logits if padded else logits[..., :self.config.vocab_size]

    def forward(self, idx, targets=None, padding_mask=None):
        """
        Without targets: logits (B, T, V) over the real vocabulary, V = vocab_size. With targets (B, T),
        -100 where there is nothing to predict: (logits, mean cross-entropy). An encoder computes the
        output layer only at the predicted positions (BERT's masked tokens), so its logits are (N, V)
        for the N targets.
        """
        h = self.hidden_states(idx, padding_mask)
        if targets is None:
            return self.head(h), None
        if not self.config.causal:  # sparse prediction: ~15% of positions need the big vocab matmul
            chosen = targets != -100
            h, targets = h[chosen], targets[chosen]
        logits = self.head(h, padded=True)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits[..., :self.config.vocab_size], loss

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
        """AdamW; only matrices (>= 2-D: Linear weights, embeddings) are decayed, not biases or norms.
        (optim.make_optimizer builds this, or Muon for the blocks' matrices with AdamW for the rest.)"""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # the fused kernel (CUDA, and CPU since torch 2.4) updates every tensor in one pass: on CPU 0.8 ms a step
        # against 4.1 for the per-tensor loop at nanoGPT's baby size, 6% of its step
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

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
        return self.head(h[:, -1]).float()

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        stop_token=None, use_kv_cache=True, generator=None, suppress_tokens=(), logits_processor=None):
        """
        Yield the next token of every sequence, a (B,) tensor per step. With the KV cache: one
        forward over the prompt (prefill), then one token at a time, each step attending to the
        cached keys and values. Without it: the whole (cropped) context again at every step.
        Sequences that emitted stop_token keep emitting it; generation ends when all have.
        suppress_tokens are never sampled (e.g. [MASK], which only an encoder's input contains).
        logits_processor(seq (B, T), logits (B, V)) -> logits, if given, sees each step's logits before
        sampling, with the sequences so far, and may mask them (e.g. safety.FlaggedWordFilter).
        """
        if not self.config.causal:
            raise ValueError("this is a masked-LM encoder; it fills [MASK] tokens instead of generating text")
        block = self.config.block_size
        prompt = idx if idx.size(1) <= block else idx[:, -block:]
        # every token of the run in one preallocated buffer: a step writes one column, no copies
        seq = torch.empty(idx.size(0), prompt.size(1) + max_new_tokens, dtype=idx.dtype, device=idx.device)
        seq[:, :prompt.size(1)] = prompt
        n = prompt.size(1)  # tokens in seq so far
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        suppress = torch.tensor(list(suppress_tokens), dtype=torch.long, device=idx.device) if suppress_tokens else None
        caches, pos = None, 0
        for _ in range(max_new_tokens):
            if not use_kv_cache:
                logits = self.next_token_logits(seq[:, max(0, n - block):n])
            elif caches is None or pos == block:  # prefill, or the cache is full: restart from the recent half
                context = seq[:, :n] if caches is None else seq[:, n - block // 2:n]
                # no longer than this generation can get: a checkpoint's block_size does not decide our memory
                caches = self.new_caches(seq.size(0), min(block, context.size(1) + max_new_tokens))
                logits, pos = self.next_token_logits(context, caches, 0), context.size(1)
            else:
                logits = self.next_token_logits(seq[:, n - 1:n], caches, pos)
                pos += 1
            if suppress is not None:
                logits.index_fill_(1, suppress, float("-inf"))
            if logits_processor is not None:  # the sequences so far: seq is preallocated to the end
                logits = logits_processor(seq[:, :n], logits)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if stop_token is not None:
                nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
                done |= nxt == stop_token
            seq[:, n] = nxt
            n += 1
            yield nxt
            if stop_token is not None and bool(done.all()):
                return

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, **kwargs):
        """idx (B, T) followed by up to max_new_tokens generated tokens, (B, T + n)."""
        new = list(self.generate_tokens(idx, max_new_tokens, **kwargs))
        return torch.cat([idx] + [t[:, None] for t in new], dim=1) if new else idx

    @torch.no_grad()
    def fill_mask(self, ids, mask_id, never=(), top_k=5, order="left_to_right"):
        """
        An encoder fills every mask_id in ids (a list), one at a time: the leftmost mask (left_to_right) or
        the one it is most sure of (most_confident) gets the most likely token that is not in `never` (the
        special tokens), and the encoder runs again so later choices see earlier ones. Returns (filled ids,
        [(position, [(token id, probability)] * top_k)] in the order filled).
        """
        if order not in ("left_to_right", "most_confident"):
            raise ConfigError(f"fill_order={order!r} is not left_to_right or most_confident")
        ids, steps = list(ids), []
        device = self.lm_head.weight.device
        while mask_id in ids:
            logits = self(torch.tensor([ids], dtype=torch.long, device=device))[0]
            probs = F.softmax(logits[0].float(), dim=-1)  # (T, V)
            probs[:, list(never)] = 0
            positions = [i for i, t in enumerate(ids) if t == mask_id]
            pos = positions[0] if order == "left_to_right" else max(positions, key=lambda i: probs[i].max().item())
            p, candidates = probs[pos].topk(top_k)
            steps.append((pos, list(zip(candidates.tolist(), p.tolist()))))
            ids[pos] = int(candidates[0])
        return ids, steps


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token id per row of logits (B, V): greedy at temperature 0, else sampled from the
    softmax restricted to the top_k largest and to the smallest set holding top_p of the mass."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):  # top_k >= vocabulary keeps every token: skip the sort
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
    drop_sorted[..., 0] = False  # the most likely token always stays (top_p=0 is greedy, not an empty set)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


# -----------------------------------------------------------------------------
# the third family: an encoder-decoder (T5, BART; the original Transformer's shape)

class EncoderDecoder(GPT):
    """
    GPT's stack with bidirectional attention (causal=False) reads the input: the encoder is `transformer`,
    built and run by GPT exactly as a masked-LM encoder is. A causal stack of DecoderBlocks (`decoder`)
    writes the output one token at a time, each block also attending to the encoder's final states
    (Vaswani et al. 2017; Raffel et al. 2020). One token embedding serves both stacks and, tied, the
    output layer. Positions as config.pos says: a learned table per stack, or RoPE in both
    self-attentions (cross-attention compares content only, as T5's does).
    """

    def __init__(self, config):
        super().__init__(config)
        self.decoder = nn.ModuleDict(dict(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([DecoderBlock(config) for _ in range(config.n_decoder_layer)]),
            ln_f=make_norm(config),
        ))
        if config.pos == "learned":
            self.decoder["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.decoder.apply(self._init_weights)
        # GPT-2's residual scaling (see GPT) for a stack whose blocks add three branches each
        for name, p in self.decoder.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(3 * config.n_decoder_layer))

    def get_num_params(self, non_embedding=True):
        n = super().get_num_params(non_embedding)
        return n - self.decoder.wpe.weight.numel() if non_embedding and "wpe" in self.decoder else n

    def encode(self, idx, padding_mask=None):
        """The encoder's reading of idx (B, S) as every decoder block's cross-attention keys and values: a
        list of (k, v), computed once per input however many tokens the decoder then writes."""
        h = self.hidden_states(idx, padding_mask)  # GPT's stack, bidirectional
        return [block.cross_attn.memory_kv(h) for block in self.decoder.h]

    def decoder_hidden_states(self, idx, memory, memory_mask=None, caches=None, pos=0):
        """The decoder's final-norm hidden states (B, T, C) for its input ids idx (B, T) at positions
        pos..pos+T-1, reading memory = encode(input), whose real tokens memory_mask (B, S) marks."""
        x, rope = self.embed(idx, pos, self.decoder, what="output")
        x = self.decoder.drop(x)
        for i, block in enumerate(self.decoder.h):
            if self.grad_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, memory[i], rope, memory_mask, use_reentrant=False)
            else:
                x = block(x, memory[i], rope, memory_mask, caches[i] if caches is not None else None, pos)
        return self.decoder.ln_f(x)

    def forward(self, idx, decoder_idx, targets=None, padding_mask=None):
        """
        Logits (B, T, V) of the decoder reading decoder_idx (B, T) (the output so far: a start token, then
        the target shifted right) while attending to the input idx (B, S), whose real tokens padding_mask
        marks. With targets (B, T), -100 where there is nothing to predict: (logits, mean cross-entropy).
        """
        h = self.decoder_hidden_states(decoder_idx, self.encode(idx, padding_mask), padding_mask)
        if targets is None:
            return self.head(h), None
        logits = self.head(h, padded=True)  # as GPT.forward: the padding columns are -inf, the loss ignores them
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits[..., :self.config.vocab_size], loss

    def crop_block_size(self, block_size):
        super().crop_block_size(block_size)
        if "wpe" in self.decoder:
            self.decoder.wpe.weight = nn.Parameter(self.decoder.wpe.weight[:block_size])

    @torch.no_grad()
    def cross_attention_maps(self, idx, decoder_idx, padding_mask=None):
        """Cross-attention probabilities of every decoder block, a list of (B, nh, T, S): how each output
        token (row) spreads its attention over the input tokens (columns), from one forward pass."""
        attns = [b.cross_attn for b in self.decoder.h]
        for a in attns:
            a.capture = True
        try:
            self(idx, decoder_idx, padding_mask=padding_mask)
            return [a.attn_probs for a in attns]
        finally:
            for a in attns:
                a.capture, a.attn_probs = False, None

    # --- generation: the encoder once, then the decoder as a GPT generates ------------------------

    def new_caches(self, batch_size, max_len, dtype=None):
        """Self-attention caches for the decoder's blocks (the encoder runs once and keeps none)."""
        c, w = self.config, self.lm_head.weight
        return [KVCache(batch_size, c.n_kv_head, max_len, c.head_size, dtype or w.dtype, w.device)
                for _ in range(c.n_decoder_layer)]

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                        use_kv_cache=True, generator=None, suppress_tokens=(), decoder_idx=None, padding_mask=None,
                        logits_processor=None):
        """
        Yield the next output token of every sequence, a (B,) tensor per step, for the inputs idx (B, S)
        (padding_mask marks their real tokens). The encoder runs once and every decoder block's
        cross-attention keys and values are computed once; the decoder starts from decoder_idx (B, T),
        at least the start token, and runs as GPT.generate_tokens does: with the KV cache one forward
        over decoder_idx, then one token at a time; without it, the whole output again at every step.
        The options are GPT.generate_tokens'; the output ends where the decoder's context (block_size) does.
        """
        if decoder_idx is None:
            raise ValueError("an encoder-decoder generates from decoder_idx, the output's start token(s)")
        memory = self.encode(idx, padding_mask)
        seq, pos = decoder_idx, 0
        caches = self.new_caches(idx.size(0), self.config.block_size) if use_kv_cache else None
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(min(max_new_tokens, self.config.block_size - seq.size(1) + 1)):
            h = self.decoder_hidden_states(seq[:, pos:], memory, padding_mask, caches, pos)
            pos = seq.size(1) if use_kv_cache else 0
            logits = self.head(h[:, -1]).float()
            if suppress_tokens:
                logits[:, list(suppress_tokens)] = float("-inf")
            if logits_processor is not None:  # sees the output so far, as in GPT.generate_tokens
                logits = logits_processor(seq, logits)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if stop_token is not None:
                nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
                done |= nxt == stop_token
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            yield nxt
            if stop_token is not None and bool(done.all()):
                return

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, decoder_idx=None, **kwargs):
        """decoder_idx (B, T) followed by up to max_new_tokens generated tokens, (B, T + n)."""
        new = list(self.generate_tokens(idx, max_new_tokens, decoder_idx=decoder_idx, **kwargs))
        return torch.cat([decoder_idx] + [t[:, None] for t in new], dim=1)


def build_model(config):
    """The model a config describes: an EncoderDecoder when it has decoder layers, else a GPT (causal or encoder)."""
    return EncoderDecoder(config) if config.n_decoder_layer else GPT(config)


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

class CheckpointError(NanorootsError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile (_orig_mod.) and DDP (module.) add to parameter names."""
    return {re.sub(r"^(_orig_mod\.|module\.)+", "", k).replace("._orig_mod.", "."): v for k, v in state_dict.items()}


def checkpoint_path(out_dir_or_file):
    return out_dir_or_file if out_dir_or_file.endswith(".pt") else os.path.join(out_dir_or_file, "ckpt.pt")


def save_checkpoint(checkpoint, out_dir, keep_last=1):
    """
    Write out_dir/ckpt.pt so that a crash at any moment leaves the old file or the new one (atomic_file).
    With keep_last > 1 the checkpoint is also kept as ckpt-<iter>.pt (a hard link, no extra copy) and only
    the newest keep_last of those stay: older ones are pruned before the new one is linked, so a kill at
    any point leaves at most keep_last numbered files.
    """
    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, "ckpt.pt")
    numbered = os.path.join(out_dir, f"ckpt-{checkpoint.get('iter_num', 0):07d}.pt")
    if keep_last > 1:
        others = sorted(p for p in glob.glob(os.path.join(out_dir, "ckpt-*.pt")) if p != numbered)
        for old in others[:-(keep_last - 1)]:
            os.remove(old)
    with atomic_file(final, "wb") as f:
        torch.save(checkpoint, f)
    if keep_last > 1:
        if os.path.exists(numbered):
            os.remove(numbered)
        os.link(final, numbered)
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
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it holds Python objects, not plain tensors and values, "
                              f"so loading it could run code ({str(e).splitlines()[0][:120]}). "
                              f"Only load checkpoints you trust, or convert them to safetensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        others = sorted(glob.glob(os.path.join(os.path.dirname(path), "ckpt-*.pt")), reverse=True)
        good = next((p for p in others if _loads_cleanly(p)), None)
        hint = f"the last good checkpoint is {good}" if good else "no other checkpoint was found in that folder"
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}); {hint}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict; check --out_dir/--init_from")
    checkpoint["source"] = path  # named in the errors of the checks that follow
    return checkpoint


def model_from_checkpoint(checkpoint, device="cpu"):
    """Rebuild the model (GPT or EncoderDecoder) a checkpoint was saved from, with its weights. Its model_args are data: they are
    checked against the tensors it really holds before the model is allocated."""
    where = checkpoint.get("source", "the checkpoint") if isinstance(checkpoint, dict) else "the checkpoint"
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) or "model_args" not in checkpoint:
        raise CheckpointError(f"{where} has no model weights and model_args: it is not a nanoroots checkpoint")
    try:
        config = GPTConfig.from_dict(checkpoint["model_args"])
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    state = clean_state_dict(checkpoint["model"])
    check_weights_fit(config, state, where)
    model = build_model(config)
    model.load_state_dict(state, strict=False)  # check_weights_fit made sure every tensor is there, bar a tied head
    return model.to(device)


def state_shapes(c):
    """
    {name: shape} of every tensor in build_model(c).state_dict(), from the config alone: what a model of config c
    would allocate, known before anything is. (Building GPT(c) on the meta device gives the same, which
    tests/test_model.py checks, but costs seconds the first time: torch loads its compiler stack for
    random init and arange on meta tensors.)
    """
    C, H = c.n_embd, c.hidden_size
    norm_bias = c.norm == "layernorm" and c.bias

    def linear(name, n_out, n_in, bias=c.bias):
        return {f"{name}.weight": torch.Size([n_out, n_in])} | ({f"{name}.bias": torch.Size([n_out])} if bias else {})

    def norm(name):
        return {f"{name}.weight": torch.Size([C])} | ({f"{name}.bias": torch.Size([C])} if norm_bias else {})

    def block(p, cross=False):  # a Block, or a DecoderBlock with its cross-attention
        shapes = (norm(p + "ln_1") | linear(p + "attn.c_attn", (c.n_head + 2 * c.n_kv_head) * c.head_size, C)
                  | linear(p + "attn.c_proj", C, C) | norm(p + "ln_2")
                  | linear(p + "mlp.c_fc", 2 * H if c.mlp == "swiglu" else H, C) | linear(p + "mlp.c_proj", C, H))
        if cross:
            shapes |= (norm(p + "ln_x") | linear(p + "cross_attn.c_attn", c.n_head * c.head_size, C)
                       | linear(p + "cross_attn.c_kv", 2 * c.n_kv_head * c.head_size, C) | linear(p + "cross_attn.c_proj", C, C))
        return shapes

    shapes = {"transformer.wte.weight": torch.Size([c.padded_vocab_size, C])}
    for stack, n_blocks in (("transformer", c.n_layer), ("decoder", c.n_decoder_layer)):
        if n_blocks and c.pos == "learned":
            shapes[f"{stack}.wpe.weight"] = torch.Size([c.block_size, C])
        for i in range(n_blocks):
            shapes |= block(f"{stack}.h.{i}.", cross=stack == "decoder")
        shapes |= norm(f"{stack}.ln_f") if n_blocks else {}
    if c.mlm_transform:
        shapes |= linear("mlm_transform.0", C, C, True) | {"mlm_transform.2.weight": torch.Size([C]), "mlm_transform.2.bias": torch.Size([C])}
    return shapes | {"lm_head.weight": torch.Size([c.padded_vocab_size, C])}


def check_weights_fit(config, state, where):
    """
    Before anything is allocated: the tensors a model of `config` has (state_shapes) are the tensors of
    `state`, by name and shape; a tied output layer may be left out. The layer count is compared first,
    so a config that claims a million layers is refused without listing them.
    """
    for stack, key in (("transformer", "n_layer"), ("decoder", "n_decoder_layer")):
        layers = {int(m.group(1)) for k in state if (m := re.match(rf"{stack}\.h\.(\d+)\.", k))}
        if layers != set(range(getattr(config, key))):
            raise CheckpointError(f"{where} says {key}={getattr(config, key)} but its weights hold {len(layers)} layers: "
                                  f"its model_args do not describe its weights")
    expected = state_shapes(config)
    if config.tie_embeddings and "lm_head.weight" not in state:
        expected.pop("lm_head.weight")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [(k, tuple(getattr(state[k], "shape", ())), tuple(expected[k])) for k in expected if k in state
             and (not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k])]
    if missing or unexpected or wrong:
        shown = (f"{wrong[0][0]} has shape {wrong[0][1]}, model_args imply {wrong[0][2]}" if wrong else
                 f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        raise CheckpointError(f"{where} does not match its model_args ({shown}): the file is corrupt or was edited")


def checkpoint_tokenizer(checkpoint, source):
    """The tokenizer a checkpoint's token ids belong to (train.py and finetune.py record it; GPT-2's is known)."""
    if checkpoint.get("tokenizer") is None:
        raise CheckpointError(f"{source} does not say which tokenizer its ids belong to (nanoroots knows char, gpt2 and "
                              f"its own bpe); finetune it with train.py on a prepared dataset, whose tokenizer the "
                              f"checkpoint then records")
    return tokenizer_from_spec(checkpoint["tokenizer"])
