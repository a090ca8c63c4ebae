import math
from dataclasses import asdict

import pytest
import torch

from configurator import ConfigError
from hf import export_hf
from model import GPT, GPTConfig, KVCache, model_from_checkpoint, sample_next, state_shapes, top_p_filter

TINY = dict(block_size=32, vocab_size=70, n_layer=2, n_head=4, n_embd=32)
LLAMA = dict(TINY, pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_embeddings=False)
QK_NORM = dict(TINY, qk_norm=True, bias=False)


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**(TINY | kw))).eval()


def test_logits_cover_the_real_vocabulary_of_a_padded_model():
    model = tiny()
    assert model.lm_head.weight.shape == (128, 32)  # the output matmul runs on a multiple of 64
    x = torch.randint(0, 70, (3, 16))
    logits, loss = model(x)
    assert logits.shape == (3, 16, 70) and loss is None  # the 58 padding columns are no tokens
    assert model.next_token_logits(x).shape == (3, 70)
    targets = torch.randint(0, 70, (3, 16))
    untied = tiny(tie_embeddings=False).train()
    logits, loss = untied(x, targets)  # the loss is over the same 70 columns: the padding gets no probability
    assert logits.shape == (3, 16, 70)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 70), targets.reshape(-1)), atol=1e-6)
    loss.backward()
    assert untied.lm_head.weight.grad[70:].abs().max() == 0 and untied.lm_head.weight.grad[:70].abs().max() > 0


def test_initial_loss_is_near_uniform():
    model = tiny(vocab_size=1000)
    x = torch.randint(0, 1000, (4, 32))
    _, loss = model(x, torch.randint(0, 1000, (4, 32)))
    assert abs(loss.item() - math.log(1000)) < 0.1  # small init: the model starts out guessing uniformly


@pytest.mark.parametrize("kw", [{}, LLAMA, QK_NORM], ids=["gpt2", "llama-gqa", "qk-norm"])
def test_kv_cache_greedy_equals_no_cache(kw):
    model = tiny(**kw)
    prompt = torch.randint(0, 70, (2, 5))
    with_cache = model.generate(prompt, 20, temperature=0)
    without = model.generate(prompt, 20, temperature=0, use_kv_cache=False)
    assert torch.equal(with_cache, without) and with_cache.shape == (2, 25)


def test_kv_cache_holds_only_kv_heads():
    model = tiny(**LLAMA)
    caches = model.new_caches(batch_size=2, max_len=32)
    assert caches[0].k.shape == (2, 2, 32, 8)  # n_kv_head=2 of n_head=4


def test_generation_past_the_context_keeps_going():
    model = tiny()
    out = model.generate(torch.zeros(1, 30, dtype=torch.long), 40, temperature=0)
    assert out.shape == (1, 70)


def test_stop_token_ends_each_sequence():
    model = tiny()
    first = model.generate(torch.zeros(2, 3, dtype=torch.long), 1, temperature=0)[:, -1]
    stop = int(first[0])
    out = list(model.generate_tokens(torch.zeros(2, 3, dtype=torch.long), 10, temperature=0, stop_token=stop))
    assert len(out) == 1  # both rows produced the stop token at once, so generation ended


def test_top_p_keeps_the_right_mass():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    logits = probs.log()
    kept = torch.isfinite(top_p_filter(logits, 0.75))
    assert kept.tolist() == [[True, True, False, False, False]]  # 0.5 < 0.75, 0.5+0.3 crosses it
    assert torch.isfinite(top_p_filter(logits, 0.85)).sum() == 3
    assert torch.isfinite(top_p_filter(logits, 0.3)).sum() == 1  # the top token is always kept
    shuffled = logits[:, [3, 0, 4, 1, 2]]
    assert torch.isfinite(top_p_filter(shuffled, 0.75)).tolist() == [[False, True, False, True, False]]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, None, 0.75, g) for _ in range(2000)])
    freq0 = (draws == 0).float().mean().item()
    assert set(draws.unique().tolist()) == {0, 1} and abs(freq0 - 0.5 / 0.8) < 0.04


def test_top_k_and_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert sample_next(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits.repeat(500, 1), 1.0, 2, None, g).tolist()) == {1, 2}


def test_causal_and_bidirectional_attention():
    """Changing a later token changes earlier logits only in the bidirectional encoder."""
    for causal in (True, False):
        model = tiny(causal=causal)
        x = torch.randint(0, 70, (1, 12))
        y = x.clone()
        y[0, 8] = (x[0, 8] + 1) % 70
        before, after = model(x)[0][0, :8], model(y)[0][0, :8]
        assert torch.allclose(before, after) == causal


def test_padding_mask_hides_pad_tokens():
    model = tiny(causal=False)
    x = torch.randint(0, 69, (1, 6))
    padded = torch.cat([x, torch.full((1, 4), 69)], dim=1)
    mask = torch.cat([torch.ones(1, 6, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)], dim=1)
    h_short = model.hidden_states(x)
    h_pad = model.hidden_states(padded, padding_mask=mask)[:, :6]
    assert torch.allclose(h_short, h_pad, atol=1e-5)
    assert torch.allclose(GPT.pool(h_pad, mask[:, :6], "mean"), h_short.mean(1), atol=1e-5)
    assert torch.equal(GPT.pool(model.hidden_states(padded, padding_mask=mask), mask, "last")[0], h_pad[0, 5])


def test_sparse_mlm_loss_equals_dense_loss():
    model = tiny(causal=False)
    x = torch.randint(0, 70, (2, 16))
    targets = torch.full_like(x, -100)
    targets[0, 3], targets[1, 7] = 5, 9
    logits, loss = model(x, targets)
    dense = model(x)[0]
    expected = torch.nn.functional.cross_entropy(torch.stack([dense[0, 3], dense[1, 7]]), torch.tensor([5, 9]))
    assert logits.shape == (2, 70) and torch.allclose(loss, expected, atol=1e-5)


def test_attention_maps_rows_sum_to_one_and_are_causal():
    model = tiny()
    maps = model.attention_maps(torch.randint(0, 70, (1, 10)))
    assert len(maps) == 2 and maps[0].shape == (1, 4, 10, 10)
    assert torch.allclose(maps[1].sum(-1), torch.ones(1, 4, 10))
    assert torch.equal(maps[1][0, 0].triu(1), torch.zeros(10, 10))
    # capturing leaves the fast path untouched
    assert all(not b.attn.capture for b in model.transformer.h)


@pytest.mark.parametrize("kw,match", [(dict(n_embd=30), "divisible by n_head"), (dict(n_kv_head=3), "n_kv_head"),
                                      (dict(n_head=16, pos="rope", n_embd=48), "even head size"), (dict(norm="batchnorm"), "norm"),
                                      (dict(n_head=0), "n_head=0 must be at least 1"), (dict(n_layer=-1), "n_layer=-1 must be at least 1"),
                                      (dict(dropout=1.5), r"dropout=1.5 must be in \[0, 1\)"), (dict(pos="alibi"), "pos='alibi'"),
                                      (dict(n_layer=1e6), "n_layer=1000000.0 must be int"), (dict(bias="yes"), "bias='yes' must be bool"),
                                      (dict(pos="rope", block_size=10**11), "too long for RoPE tables")])
def test_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        GPTConfig(**(TINY | kw))


def test_residual_projection_init_is_scaled():
    model = tiny(n_layer=8)
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.002


def test_optimizer_decays_only_matrices():
    model = tiny(bias=True)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0


def test_qk_norm_normalises_queries_and_keys_per_head():
    model = tiny(**QK_NORM)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 8, 32)
    q, k, v = attn.c_attn(x).split(32, dim=2)
    q, k, v = (t.view(2, 8, 4, 8).transpose(1, 2) for t in (q, k, v))
    q, k = (t / t.pow(2).mean(-1, keepdim=True).add(torch.finfo(t.dtype).eps).sqrt() for t in (q, k))
    att = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(torch.ones(8, 8).triu(1).bool(), float("-inf")).softmax(-1)
    assert torch.allclose(attn(x), attn.c_proj((att @ v).transpose(1, 2).reshape(2, 8, 32)), atol=1e-5)
    with pytest.raises(ValueError, match="qk_norm=True"):
        export_hf(model, "unused")  # no Hugging Face architecture computes it


def test_mfu_is_none_on_cpu():
    assert tiny().estimate_mfu(1000, 0.1, "cpu", "float32") is None


def test_crop_block_size():
    model = tiny()
    model.crop_block_size(16)
    assert model.transformer.wpe.weight.shape[0] == 16
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_kvcache_update_returns_prefix():
    cache = KVCache(1, 2, 8, 4, torch.float32, "cpu")
    k, v = cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    assert k.shape == (1, 2, 3, 4)
    k, v = cache.update(3, torch.full((1, 2, 1, 4), 2.0), torch.ones(1, 2, 1, 4))
    assert k.shape == (1, 2, 4, 4) and k[0, 0, 3, 0] == 2.0


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny(dropout=0.0).train()
        model.grad_checkpoint = checkpointing
        x = torch.randint(0, 70, (2, 16), generator=torch.Generator().manual_seed(1))
        _, loss = model(x, torch.roll(x, -1, 1))
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("kw", [{}, LLAMA], ids=["gpt2-tied", "llama-rope-untied"])
def test_model_from_checkpoint_rebuilds_the_same_model(kw):
    """The same logits, the head still tied to the embedding (or not), and the buffers checkpoints do not
    hold (RoPE, the padding bias) rebuilt by make_buffers."""
    model = tiny(**kw)
    loaded = model_from_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config)})
    idx = torch.randint(0, 70, (2, 16))
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == model.config.tie_embeddings
    assert all(not t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])


@pytest.mark.parametrize("kw", [{}, dict(bias=False), LLAMA, dict(LLAMA, bias=True, tie_embeddings=True),
                                dict(causal=False, mlm_transform=True), dict(norm="rmsnorm", bias=True, mlp_hidden=40)])
def test_state_shapes_are_the_shapes_of_the_model(kw):
    """The loaders check untrusted model_args with state_shapes, before anything is built: it must list
    exactly the tensors the model has, with their shapes."""
    config = GPTConfig(**(TINY | kw))
    with torch.device("meta"):
        built = {k: v.shape for k, v in GPT(config).state_dict().items()}
    assert state_shapes(config) == built
