"""Exports that transformers runs as they are: `python hf.py --init_from=<out_dir> --export_hf=<folder>`
writes the model, its tokenizer and its generation settings, and transformers' AutoTokenizer and
pipelines give what nanoroots gives, for each tokenizer kind (char, gpt2, our trained BPE) and for
the masked-LM encoder. The models are tiny: GPTs with random weights (the same function gives the
same greedy text whatever the weights), an encoder trained for a few steps.
"""

import json
import os
import sys
from dataclasses import asdict

import pytest
import torch

import hf
import sample
from conftest import ROOT
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint
from tokenizer import EOT, SPECIAL_TOKENS, CharTokenizer, TokenizerError, build_tokenizer, hf_tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is not installed "
                                   "(pip install -r requirements-dev.txt): the exports cannot be run in it")

MIXED = "ROMEO: Hello world! It's 2026.\n你好，世界。机器学习很有趣！ emoji 🎉👩‍👩‍👧 naïve café 1234567\t\tend  \n"
KINDS = ("char", "gpt2", "bpe")


def export(out_dir, folder, monkeypatch, capsys):
    """The command a user runs; returns what it printed."""
    hf.main([f"--init_from={out_dir}", f"--export_hf={folder}"])
    return capsys.readouterr().out


def checkpoint(model, tok):
    """What train.py saves, as far as an export reads it."""
    return {"model": model.state_dict(), "model_args": asdict(model.config), "tokenizer": tok.spec()}


def random_gpt(tok, seed=0):
    """A 2-layer GPT with weights far from their small initial values, so that greedy decoding
    wanders through the vocabulary (multi-byte characters, merges, partial UTF-8) instead of repeating one token."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def trained_encoder(tok, text, steps=25, seed=0):
    """A 2-layer masked-LM encoder trained for a few steps on `text` (15% of the tokens replaced by
    [MASK] and predicted), so that its candidates are ranked by what it learned."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, bias=False, causal=False))
    data = torch.tensor(tok.encode(text))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.stack([data[i:i + 64] for i in torch.randint(0, len(data) - 64, (8,), generator=g)])
        chosen = torch.rand(x.shape, generator=g) < 0.15
        _, loss = model(torch.where(chosen, tok.special_ids["[MASK]"], x), torch.where(chosen, x, -100))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (tokenizer, checkpoint path)}: a GPT for each tokenizer kind, and a masked-LM encoder
    ("mlm") with the bpe tokenizer; the tokenizers are fitted to Shakespeare plus a few mixed lines."""
    root = tmp_path_factory.mktemp("export")
    with open(os.path.join(ROOT, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        text = f.read(20000) + "\n" + MIXED * 3
    runs = {}
    for kind in KINDS:
        tok = build_tokenizer(kind, [text], vocab_size=400, progress=False)
        runs[kind] = (tok, save_checkpoint(checkpoint(random_gpt(tok), tok), str(root / kind)))
    tok = runs["bpe"][0]
    runs["mlm"] = (tok, save_checkpoint(checkpoint(trained_encoder(tok, text), tok), str(root / "mlm")))
    return runs


# -----------------------------------------------------------------------------
# the tokenizer

@pytest.mark.parametrize("kind", KINDS)
def test_autotokenizer_gives_our_ids_on_mixed_text(runs, kind, tmp_path, monkeypatch, capsys):
    tok, out_dir = runs[kind]
    export(out_dir, tmp_path, monkeypatch, capsys)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= set(os.listdir(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = MIXED + EOT + "[PAD]"
    ours = tok.encode(text, allow_special=True)
    assert hf(text)["input_ids"] == ours  # nothing added around the text, the specials matched as ours are
    assert hf.decode(ours) == tok.decode(ours) == text
    assert len(hf) == tok.vocab_size
    assert (hf.eos_token_id, hf.pad_token_id) == (tok.special_ids[EOT], tok.special_ids["[PAD]"])
    if kind != "char":  # our pattern and GPT-2's: digit runs, whitespace runs, Han runs, emoji bytes
        assert len(ours) < len(text.encode("utf-8"))  # merges were applied, not just bytes


def test_char_export_drops_characters_outside_its_vocabulary(runs, tmp_path, monkeypatch, capsys):
    """There is no [UNK] token: the exported char tokenizer drops a character it does not know, as
    finetune.py and the perplexity filter do; our own encode refuses the text."""
    tok, out_dir = runs["char"]
    export(out_dir, tmp_path, monkeypatch, capsys)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert "€" not in tok.stoi and "Ж" not in tok.stoi
    assert hf("to €be Ж")["input_ids"] == tok.encode("to be ")
    with pytest.raises(TokenizerError, match="not in this character vocabulary"):
        tok.encode("to €be")


def test_missing_tokenizers_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now raises ImportError
    with pytest.raises(TokenizerError, match=r"needs the `tokenizers` package: pip install tokenizers"):
        hf_tokenizer(CharTokenizer("ab"))


# -----------------------------------------------------------------------------
# generation

@pytest.mark.parametrize("kind", KINDS)
def test_text_generation_pipeline_greedy_equals_sample_py(runs, kind, tmp_path, monkeypatch, capsys):
    _, out_dir = runs[kind]
    export(out_dir, tmp_path, monkeypatch, capsys)
    prompt = "ROMEO: 你好"
    sample.main([f"--out_dir={out_dir}", f"--start={prompt}", "--temperature=0", "--num_samples=2", "--max_new_tokens=40",
                 f"--stop={EOT}", "--device=cpu", "--dtype=float32"])
    blocks = capsys.readouterr().out.split("\n" + "-" * 40 + "\n")
    ours = blocks[1]  # the second sample, decoded whole (the first is streamed); greedy, so both are the same
    assert ours.startswith(prompt) and len(ours) > len(prompt) + 10
    generate = transformers.pipeline("text-generation", model=str(tmp_path), device="cpu")
    theirs = generate(prompt, do_sample=False, max_new_tokens=40)[0]["generated_text"]
    assert theirs == ours
    # and token for token (random bytes all decode to U+FFFD): sample.py's call to our generator
    tok, model = runs[kind][0], model_from_checkpoint(load_checkpoint(out_dir)).eval()
    ids = tok.encode(prompt, allow_special=True)
    our_ids = model.generate(torch.tensor([ids]), 40, temperature=0.0, stop_token=tok.special_ids[EOT],
                             suppress_tokens=[tok.special_ids[s] for s in SPECIAL_TOKENS[1:]])[0].tolist()
    assert generate(prompt, do_sample=False, max_new_tokens=40, return_tensors=True)[0]["generated_token_ids"] == our_ids


def test_generation_config_stops_at_endoftext_and_suppresses_bert_tokens(runs, tmp_path, monkeypatch, capsys):
    tok, out_dir = runs["bpe"]
    export(out_dir, tmp_path, monkeypatch, capsys)
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.special_ids[EOT] and gen["pad_token_id"] == tok.special_ids["[PAD]"]
    assert sorted(gen["suppress_tokens"]) == sorted(tok.special_ids[s] for s in SPECIAL_TOKENS[1:])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["vocab_size"] == tok.vocab_size


# -----------------------------------------------------------------------------
# the masked-LM encoder

def encoder_with_transform(runs, tmp_path):
    """The trained encoder with BERT's head transform added in front of its output layer (random
    weights, so that it changes the candidates): the variant MegatronBERT's head holds exactly."""
    ckpt = load_checkpoint(runs["mlm"][1])
    args = ckpt["model_args"] | {"mlm_transform": True}
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(args))
    model.load_state_dict(ckpt["model"], strict=False)  # all but mlm_transform, which keeps its initial weights
    with torch.no_grad():
        for p in model.mlm_transform.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return save_checkpoint({"model": model.state_dict(), "model_args": args, "tokenizer": ckpt["tokenizer"]},
                           str(tmp_path / "out-mlm-transform"))


@pytest.mark.parametrize("head", ["plain", "mlm_transform"])
def test_fill_mask_pipeline_ranks_our_candidates(runs, head, tmp_path, monkeypatch, capsys):
    tok, out_dir = runs["mlm"]
    if head == "mlm_transform":
        out_dir = encoder_with_transform(runs, tmp_path)
    printed = export(out_dir, tmp_path / "hf", monkeypatch, capsys)
    assert "(megatron-bert layout)" in printed and "pipeline('fill-mask'" in printed
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["MegatronBertForMaskedLM"]
    assert not (tmp_path / "hf" / "generation_config.json").exists()
    model = model_from_checkpoint(load_checkpoint(out_dir)).eval()
    prompt = "ROMEO: to be or not to [MASK], 你好"
    _, found = model.fill_mask(tok.encode(prompt, allow_special=True), tok.special_ids["[MASK]"], tok.special_ids.values(), top_k=5)
    ours = [(tok.decode([c]), p) for c, p in found[0][1]]
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "hf"), device="cpu")
    # ours never proposes a special token; transformers' pipeline may: leave those out, keep the first 5
    theirs = [c for c in fill(prompt, top_k=10) if c["token"] not in tok.special_ids.values()][:5]
    assert [c["token_str"] for c in theirs] == [s for s, _ in ours]
    assert [c["score"] for c in theirs] == pytest.approx([p for _, p in ours], rel=1e-4)


@pytest.mark.parametrize("head", ["plain", "mlm_transform"])
def test_encoder_logits_match_megatron_bert(runs, head, tmp_path, monkeypatch, capsys):
    """With mlm_transform the function is the same; without it, the head MegatronBERT forces on us
    computes ln_f with eps = 0 (hf.HEAD_SCALE), which we check to float32 rounding, then its distance from ours."""
    out_dir = runs["mlm"][1] if head == "plain" else encoder_with_transform(runs, tmp_path)
    export(out_dir, tmp_path / "hf", monkeypatch, capsys)
    ours = model_from_checkpoint(load_checkpoint(out_dir)).eval()
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "MegatronBertForMaskedLM"
    idx = torch.randint(0, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = theirs(idx).logits, ours(idx)[0]
        assert got.shape == want.shape == (2, 40, ours.config.vocab_size)
        if head == "plain":
            eps = ours.transformer.ln_f.eps
            ours.transformer.ln_f.eps = 0.0
            torch.testing.assert_close(got, ours(idx)[0], atol=2e-5, rtol=1e-5)
            ours.transformer.ln_f.eps = eps
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
