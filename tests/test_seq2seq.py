"""The encoder-decoder: its model, span-corruption pretraining, seq2seq finetuning and sampling."""

import json
from collections import Counter
from dataclasses import asdict

import pytest
import torch

import finetune
import sample
import spans
import train
from configurator import ConfigError
from conftest import assert_real_png
from hf import export_hf
from model import EncoderDecoder, GPTConfig, build_model, load_checkpoint, model_from_checkpoint, save_checkpoint, state_shapes
from test_train import TINY, read_log
from tokenizer import CharTokenizer, EOT, SPECIAL_TOKENS, SENTINELS, build_tokenizer

SMALL = dict(block_size=32, vocab_size=70, n_layer=2, n_decoder_layer=2, n_head=4, n_embd=32, causal=False)
LLAMA = dict(SMALL, pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_embeddings=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine two threads wait on each other (40x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def encdec(**kw):
    torch.manual_seed(0)
    return build_model(GPTConfig(**(SMALL | kw))).eval()


# -----------------------------------------------------------------------------
# span corruption

@pytest.mark.parametrize("block_size,noise,mean_span", [(64, 0.15, 3.0), (512, 0.15, 3.0), (40, 0.4, 2.0), (300, 0.3, 8.0)])
def test_span_targets_reconstruct_the_input_exactly(block_size, noise, mean_span):
    span = spans.span_lengths(block_size, noise, mean_span)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 65, (64, span.window), generator=g)
    sentinels = list(range(1000, 1000 + len(SENTINELS)))
    src, decoder_in, target = spans.corrupt_spans(x, span, sentinels, 999, g)
    assert src.shape == (64, span.input_len) and target.shape == decoder_in.shape == (64, span.target_len)
    assert span.input_len <= block_size
    assert (decoder_in[:, 0] == 999).all() and torch.equal(decoder_in[:, 1:], target[:, :-1]) and (target[:, -1] == 999).all()
    for s, t, original in zip(src.tolist(), target.tolist(), x.tolist()):
        assert spans.restore_spans(s, t[:-1], sentinels) == original
        used = [u for u in s if u >= 1000]
        assert used == sentinels[:span.spans] and [u for u in t if u >= 1000] == used  # in order, once each
    dropped = (target < 999).sum().item()
    assert dropped == 64 * span.dropped == 64 * round(noise * span.window)


def test_span_lengths_match_t5():
    """T5's inputs of 512 tokens at 15% noise, mean span 3 have targets of 114 tokens (the t5 library's
    random_spans_helper); our windows are one token longer than its 568, as our inputs carry no </s>."""
    span = spans.span_lengths(512, 0.15, 3.0)
    assert (span.window, span.dropped, span.spans, span.input_len, span.target_len) == (569, 85, 28, 512, 114)
    assert spans.span_lengths(64, 0.15, 3.0).input_len == 64
    g = torch.Generator().manual_seed(0)
    lengths = [n for _ in range(300) for n in spans.random_partition(85, 28, g)]
    assert min(lengths) >= 1 and sum(lengths) == 85 * 300 and len(lengths) == 28 * 300
    with pytest.raises(spans.ConfigError, match="sentinels"):
        spans.span_lengths(4096, 0.15, 3.0)  # 205 spans, more than T5's 100 sentinels


def test_sentinels_follow_the_specials_and_move_no_id():
    gpt2 = build_tokenizer("gpt2")
    assert gpt2.special_ids[EOT] == 50256 and gpt2.special_ids["[PAD]"] == 50260 and gpt2.vocab_size == 50261
    assert gpt2.sentinel_ids["<extra_id_0>"] == 50261 and gpt2.sentinel_ids["<extra_id_99>"] == 50360
    text = "to be <extra_id_0> not<|endoftext|>"
    ids = gpt2.encode(text, allow_special=True)
    assert 50261 in ids and gpt2.decode(ids) == text
    assert 50261 not in gpt2.encode(text)  # only with allow_special, as the other specials
    char = CharTokenizer.from_text("abc")
    assert char.vocab_size == 3 + len(SPECIAL_TOKENS) and char.sentinel_ids["<extra_id_1>"] == char.vocab_size + 1
    assert char.encode("a<extra_id_1>b", allow_special=True) == [0, char.vocab_size + 1, 1]
    assert char.decode([char.vocab_size + 1]) == "<extra_id_1>"


# -----------------------------------------------------------------------------
# the model

@pytest.mark.parametrize("kw", [{}, LLAMA], ids=["gpt2", "llama-gqa"])
def test_cached_and_uncached_greedy_decoding_agree(kw):
    model = encdec(**kw)
    src = torch.randint(0, 70, (3, 11))
    start = torch.zeros(3, 1, dtype=torch.long)
    calls = []  # the cross-attention keys and values are computed once per input, not per token
    hooks = [b.cross_attn.c_kv.register_forward_hook(lambda *_: calls.append(1)) for b in model.decoder.h]
    with_cache = model.generate(src, 40, decoder_idx=start, temperature=0)
    assert len(calls) == len(model.decoder.h)
    for h in hooks:
        h.remove()
    without = model.generate(src, 40, decoder_idx=start, temperature=0, use_kv_cache=False)
    assert torch.equal(with_cache, without) and with_cache.shape == (3, 33)  # the decoder's context ends the output
    assert len(model.new_caches(3, 32)) == 2 and model.new_caches(3, 32)[0].k.shape[1] == model.config.n_kv_head


def test_padded_input_gives_the_same_output():
    model = encdec()
    src = torch.randint(0, 69, (1, 7))
    padded = torch.cat([src, torch.full((1, 5), 69)], dim=1)
    mask = torch.arange(12)[None] < 7
    decoder_idx = torch.randint(0, 70, (1, 9))
    short = model(src, decoder_idx)[0]
    assert torch.allclose(short, model(padded, decoder_idx, padding_mask=mask)[0], atol=1e-5)
    assert torch.equal(model.generate(src, 10, decoder_idx=decoder_idx[:, :1], temperature=0),
                       model.generate(padded, 10, decoder_idx=decoder_idx[:, :1], temperature=0, padding_mask=mask))


def test_decoder_is_causal_and_reads_the_whole_input():
    model = encdec()
    src, out = torch.randint(0, 70, (1, 10)), torch.randint(0, 70, (1, 8))
    logits = model(src, out)[0]
    assert logits.shape == (1, 8, 70)  # the real vocabulary (sentinels included), not the padded one
    later_output = out.clone()
    later_output[0, 6] = (out[0, 6] + 1) % 70
    assert torch.allclose(model(src, later_output)[0][:, :6], logits[:, :6])  # an output token sees only earlier ones
    last_input = src.clone()
    last_input[0, 9] = (src[0, 9] + 1) % 70
    assert not torch.allclose(model(last_input, out)[0][:, 0], logits[:, 0])  # the first output already reads the last input
    maps = model.cross_attention_maps(src, out)
    assert len(maps) == 2 and maps[0].shape == (1, 4, 8, 10) and torch.allclose(maps[1].sum(-1), torch.ones(1, 4, 8))
    assert all(not b.cross_attn.capture for b in model.decoder.h)


@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_tiny_encoder_decoder_learns_to_copy_and_reverse(task):
    """The decoder can only see the input through cross-attention: copying it needs every piece to work,
    and reversing it needs each output position to find its input position (positions on both sides)."""
    torch.manual_seed(0)
    model = build_model(GPTConfig(block_size=8, vocab_size=10, n_layer=2, n_decoder_layer=2, n_head=2, n_embd=32,
                                  causal=False, bias=False))
    opt = model.configure_optimizers(0.0, 3e-3, (0.9, 0.99), "cpu")
    g = torch.Generator().manual_seed(1)

    def batch(n):  # 5 tokens from 2..9; 0 starts the output, 1 ends it
        x = torch.randint(2, 10, (n, 5), generator=g)
        out = x.flip(1) if task == "reverse" else x
        target = torch.cat([out, torch.ones(n, 1, dtype=torch.long)], dim=1)
        return x, torch.cat([torch.zeros(n, 1, dtype=torch.long), target[:, :-1]], dim=1), target

    for _ in range(300):  # both reach 100% by ~150 steps (float rounding varies between runs: a margin)
        _, loss = model(*batch(32))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    x, _, target = batch(200)
    out = model.generate(x, 10, decoder_idx=torch.zeros(200, 1, dtype=torch.long), temperature=0, stop_token=1)
    assert (out[:, 1:7] == target).all(1).float().mean() > 0.95


def test_checkpoint_round_trip(tmp_path):
    model = encdec(**LLAMA)
    assert {k: v.shape for k, v in model.state_dict().items()} == state_shapes(model.config)  # checked before loading
    path = save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config), "iter_num": 3}, str(tmp_path))
    again = model_from_checkpoint(load_checkpoint(path)).eval()
    assert isinstance(again, EncoderDecoder) and again.config.n_decoder_layer == 2
    src, out = torch.randint(0, 70, (2, 9)), torch.randint(0, 70, (2, 5))
    assert torch.equal(model(src, out)[0], again(src, out)[0])


def test_config_needs_a_bidirectional_encoder_and_export_refuses():
    with pytest.raises(ConfigError, match="set causal=False"):
        GPTConfig(**(SMALL | dict(causal=True)))
    assert type(build_model(GPTConfig(**(SMALL | dict(n_decoder_layer=0))))).__name__ == "GPT"
    with pytest.raises(ValueError, match="encoder-decoder has no Hugging Face export"):
        export_hf(encdec(), "unused")  # not its encoder alone as a MegatronBERT


# -----------------------------------------------------------------------------
# pretraining, finetuning and sampling through the scripts

SPAN = ["--objective=span", "--n_decoder_layer=1", "--eval_interval=10", "--always_save_checkpoint=True", "--dropout=0.1"]


@pytest.fixture(scope="module")
def span_checkpoint(tmp_path_factory, shakespeare_char):
    root = tmp_path_factory.mktemp("span")
    train.main([*TINY, f"--dataset={shakespeare_char}", f"--out_dir={root}/out", "--max_iters=40", "--eval_interval=20",
                "--objective=span"])
    return str(root / "out")


def test_span_run_learns_and_resumes_exactly(tmp_path, shakespeare_char, capsys):
    run = lambda out, *extra: train.main([*TINY, f"--dataset={shakespeare_char}", f"--out_dir={out}", *SPAN, *extra])  # noqa: E731
    run(tmp_path / "full", "--max_iters=20")
    assert "filled:" in capsys.readouterr().out  # the end-of-run demo fills the sentinels of a val window
    run(tmp_path / "half", "--max_iters=10")
    run(tmp_path / "half", "--max_iters=20", "--init_from=resume")
    steps = lambda log: {r["iter"]: r["loss"] for r in log if "loss" in r}  # noqa: E731
    full, resumed = read_log(tmp_path / "full"), read_log(tmp_path / "half")
    assert steps(resumed) == pytest.approx(steps(full), abs=1e-6) and max(steps(resumed)) == 19
    evals = [r for r in full if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0 and 0 <= evals[-1]["val_span_acc"] <= 1
    ckpt = load_checkpoint(str(tmp_path / "full"))
    assert ckpt["model_args"]["n_decoder_layer"] == 1 and ckpt["model_args"]["vocab_size"] == 70 + len(SENTINELS)


def test_objectives_and_checkpoints_must_match(tmp_path, shakespeare_char, span_checkpoint):
    with pytest.raises(SystemExit, match="n_decoder_layer=2 is for objective=span"):
        train.main([*TINY, f"--dataset={shakespeare_char}", f"--out_dir={tmp_path}", "--n_decoder_layer=2"])
    with pytest.raises(SystemExit, match="is an encoder-decoder"):
        train.main([*TINY, f"--dataset={shakespeare_char}", f"--out_dir={tmp_path}", f"--init_from={span_checkpoint}"])


def test_seq2seq_targets_are_the_output_only():
    tok = CharTokenizer.from_text("abcdef\n")
    eot, stats = tok.special_ids[EOT], Counter()
    src, decoder_in, target = finetune.seq2seq_example(tok, "abc", "fed", 8, stats)
    assert src == tok.encode("abc") and target == tok.encode("fed") + [eot] and decoder_in == [eot] + tok.encode("fed")
    src, decoder_in, target = finetune.seq2seq_example(tok, "abcdef", "abcdef", 4, stats)
    assert len(src) == len(target) == len(decoder_in) == 4 and stats["truncated"] == 1


def write_pairs(path, n=64):
    with open(path, "w") as f:
        for i in range(n):
            text = "abcdefghij"[i % 7:i % 7 + 3]
            f.write(json.dumps({"input": text, "output": text[::-1]}) + "\n")
        f.write("not json\n")


def test_seq2seq_finetune_then_sample_with_cross_attention(tmp_path, span_checkpoint, capsys):
    write_pairs(tmp_path / "pairs.jsonl")
    finetune.main([f"--init_from={span_checkpoint}", "--task=seq2seq", f"--dataset={tmp_path}/pairs.jsonl",
                   f"--out_dir={tmp_path}/ft", "--max_iters=30", "--eval_interval=15", "--eval_iters=2", "--batch_size=8",
                   "--learning_rate=3e-3", "--device=cpu", "--threads=1", "--lora_rank=4", "--lora_targets=c_attn,c_kv"])
    out = capsys.readouterr().out
    assert "encoder-decoder model" in out and "skipped_records 1" in out
    log = [r for r in read_log(tmp_path / "ft") if "val_loss" in r]
    assert log[-1]["val_loss"] < log[0]["val_loss"]
    ckpt = load_checkpoint(str(tmp_path / "ft"))
    assert any(".cross_attn.c_kv." in k for k in ckpt["lora"])  # adapters reach the decoder's cross-attention
    assert not any("lora" in k for k in ckpt["model"])  # merged: a plain encoder-decoder
    args = [f"--out_dir={tmp_path}/ft", "--start=abc", "--device=cpu", "--max_new_tokens=12"]
    outputs = []
    for cache in (True, False):
        sample.main([*args, "--temperature=0", "--num_samples=1", f"--use_kv_cache={cache}"])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count("-" * 40) == 1
    sample.main([*args, f"--attention={tmp_path}/cross.png", f"--attention_json={tmp_path}/cross.json", "--attention_head=0"])
    assert_real_png(tmp_path / "cross.png", min_side=100)
    maps = json.load(open(tmp_path / "cross.json"))
    assert maps["cross"] and maps["tokens"] == ["a", "b", "c"] and len(maps["weights"][0]) == len(maps["output_tokens"])
    assert all(len(row) == 3 and abs(sum(row) - 1) < 1e-4 for row in maps["weights"][0])


def test_span_model_fills_sentinels_in_sample(span_checkpoint, capsys):
    sample.main([f"--out_dir={span_checkpoint}", "--start=To be, or not<extra_id_0> be", "--device=cpu",
                 "--max_new_tokens=10", "--num_samples=2"])
    out = capsys.readouterr().out
    assert out.count("filled: To be, or not") == 2 and out.count("-" * 40) == 2
    with pytest.raises(SystemExit, match="drop --template"):
        sample.main([f"--out_dir={span_checkpoint}", "--template=alpaca", "--device=cpu"])
