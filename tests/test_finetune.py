"""finetune.py: classification head, SFT labels, LoRA, a tiny end-to-end finetune, exact resume."""

import json
import os
import random
import re
from collections import Counter

import pytest
import torch

import corpora
import finetune
import prepare
import readers
import sample
import tokenizer
from model import GPT, GPTConfig, model_from_checkpoint, save_checkpoint
from tokenizer import EOT, CharTokenizer, format_prompt

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.!?#:\n"


def tiny_gpt(causal, vocab_size, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(n_layer=2, n_head=2, n_embd=16, block_size=48, vocab_size=vocab_size, causal=causal, bias=False) | kw
    return GPT(GPTConfig(**args)).eval()


def save_pretrained(path, model, tok):
    """A checkpoint as train.py writes it, reduced to what finetune.py reads."""
    model_args = {k: getattr(model.config, k) for k in model.config.__dataclass_fields__}
    save_checkpoint({"model": model.state_dict(), "model_args": model_args, "tokenizer": tok.spec(),
                     "config": {}, "iter_num": 0}, str(path))
    return str(path)


def run_finetune(*args):
    finetune.main(["--device=cpu", "--dtype=float32", "--threads=1", "--eval_iters=2", *args])


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# --- classification head ---------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_classifier_logits_do_not_depend_on_padding(causal):
    tok = CharTokenizer(ALPHABET)
    gpt = tiny_gpt(causal, tok.vocab_size)
    clf = finetune.Classifier(gpt, n_classes=3, pool="last" if causal else "mean", dropout=0.0).eval()
    rows = finetune.classification_inputs(tok, ["a fine film .", "dull"], 48, causal, Counter())
    assert rows[0][-1] == (tok.special_ids[EOT] if causal else tok.special_ids["[SEP]"])
    logits = {}
    for extra in (0, 9):  # the same sentences, padded with 0 or 9 more [PAD]s
        padded = [r + [tok.special_ids["[PAD]"]] * (len(rows[0]) - len(r) + extra) for r in rows]
        ids = torch.tensor(padded)
        logits[extra], _ = clf(ids, padding_mask=ids != tok.special_ids["[PAD]"])
    assert logits[0].shape == (2, 3)
    torch.testing.assert_close(logits[0], logits[9], atol=1e-6, rtol=0)
    # and padding changes nothing against the sentence alone in a batch of one
    alone, _ = clf(torch.tensor([rows[1]]))
    torch.testing.assert_close(alone[0], logits[0][1], atol=1e-6, rtol=0)


def test_first_token_pooling_reads_cls_for_an_encoder():
    tok = CharTokenizer(ALPHABET)
    h = torch.randn(2, 5, 4)
    assert torch.equal(GPT.pool(h, torch.ones(2, 5, dtype=torch.bool), "first"), h[:, 0])
    rows = finetune.classification_inputs(tok, ["ab"], 48, False, Counter())
    assert rows == [[tok.special_ids["[CLS]"], tok.stoi["a"], tok.stoi["b"], tok.special_ids["[SEP]"]]]


# --- SFT labels ------------------------------------------------------------------------------------

def test_sft_example_masks_the_prompt_and_appends_end_of_text():
    tok = CharTokenizer(sorted(set(tokenizer.ALPACA_PROMPT + tokenizer.ALPACA_PROMPT_NO_INPUT + "xyz0123456789")))
    record = {"instruction": "add", "input": "1 2", "output": "3"}
    stats = Counter()
    ids, targets = finetune.sft_example(tok, record, 1000, "alpaca", stats)
    prompt = tok.encode(format_prompt("add", "1 2"))
    assert prompt == tok.encode(tokenizer.ALPACA_PROMPT.format(instruction="add", input="1 2"))
    full = prompt + tok.encode("3") + [tok.special_ids[EOT]]
    assert ids == full[:-1] and len(targets) == len(ids)
    # position i predicts token i+1: the prompt's tokens are never targets; the response and the eot are
    assert targets[:len(prompt) - 1] == [-100] * (len(prompt) - 1)
    assert targets[len(prompt) - 1:] == [tok.stoi["3"], tok.special_ids[EOT]]
    # without an input the shorter template is used
    assert "### Input" not in format_prompt("add", "")
    # a context too small for any response token: skipped and counted
    assert finetune.sft_example(tok, record, len(prompt) - 3, "alpaca", stats) is None
    assert stats["skipped_prompt_fills_context"] == 1


# --- LoRA ------------------------------------------------------------------------------------------

def test_lora_starts_as_the_base_model():
    gpt = tiny_gpt(True, 40)
    x = torch.randint(40, (2, 12))
    before, _ = gpt(x)
    assert finetune.add_lora(gpt, rank=4, alpha=8.0, dropout=0.0, targets="c_attn,c_proj,c_fc") == 2 * 4  # per block: c_attn, attn.c_proj, c_fc, mlp.c_proj
    after, _ = gpt(x)
    assert torch.equal(before, after)


def test_lora_trains_only_adapters_and_head():
    gpt = tiny_gpt(False, 40)
    clf = finetune.Classifier(gpt, 2, "mean", 0.0)
    finetune.add_lora(gpt, rank=2, alpha=4.0, dropout=0.1, targets="c_attn,c_proj,c_fc")
    clf.train()
    _, loss = clf(torch.randint(40, (4, 10)), labels=torch.tensor([0, 1, 0, 1]))
    loss.backward()
    trained = {n for n, p in clf.named_parameters() if p.grad is not None}
    assert trained == {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trained and all(n.endswith(("lora_A", "lora_B")) or n.startswith("head.") for n in trained)
    trainable, total = finetune.count_parameters(clf)
    # per block: c_attn 16->48, attn c_proj 16->16, c_fc 16->64, mlp c_proj 64->16, each r*(in+out); head 16*2+2
    assert trainable == 2 * 2 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16)) + 34
    assert total == trainable + sum(p.numel() for p in tiny_gpt(False, 40).parameters())


def test_merged_lora_checkpoint_gives_the_same_logits():
    tok = CharTokenizer(ALPHABET)
    gpt = tiny_gpt(True, tok.vocab_size)
    finetune.add_lora(gpt, rank=4, alpha=16.0, dropout=0.0, targets="c_attn,c_proj,c_fc")
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.1)  # as if trained
    x = torch.randint(tok.vocab_size, (2, 20))
    unmerged, _ = gpt(x)
    state = finetune.task_state(gpt)
    model_args = {k: getattr(gpt.config, k) for k in gpt.config.__dataclass_fields__}
    plain = model_from_checkpoint({"model": state["model"], "model_args": model_args}).eval()  # what sample.py loads
    assert not any("lora" in k for k in plain.state_dict())
    merged, _ = plain(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert (unmerged - tiny_gpt(True, tok.vocab_size)(x)[0]).abs().max() > 1e-3  # and the adapters did change them


def test_freeze_layers_trains_only_the_later_blocks():
    gpt = tiny_gpt(True, 40, n_layer=3)
    finetune.freeze_first_layers(gpt, 2)
    trainable = {n.split(".")[2] for n, p in gpt.named_parameters() if p.requires_grad and ".h." in n}
    assert trainable == {"2"}
    assert not gpt.transformer.wte.weight.requires_grad and gpt.transformer.ln_f.weight.requires_grad


# --- end to end ------------------------------------------------------------------------------------

def toy_sentiment(path, n, seed):
    """Sentences that say 'good' or 'bad' among neutral words: separable by one word."""
    rng = random.Random(seed)
    filler = ["the", "film", "was", "a", "plot", "cast", "really", "so"]
    with open(path, "w") as f:
        for _ in range(n):
            label = rng.randrange(2)
            words = rng.sample(filler, 4)
            words.insert(rng.randrange(5), "good" if label else "bad")
            f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return str(path)


@pytest.fixture
def toy_setup(tmp_path):
    tok = CharTokenizer(ALPHABET)
    init = save_pretrained(tmp_path / "pretrained", tiny_gpt(False, tok.vocab_size), tok)
    train_file = toy_sentiment(tmp_path / "train.jsonl", 200, 0)
    val_file = toy_sentiment(tmp_path / "val.jsonl", 100, 1)
    return tmp_path, init, train_file, val_file


def test_classify_finetune_beats_chance_and_predicts(toy_setup, capsys, monkeypatch):
    tmp_path, init, train_file, val_file = toy_setup
    test_file = toy_sentiment(tmp_path / "test.jsonl", 100, 2)
    monkeypatch.setitem(finetune.CLASSIFY_RECIPES, "toy", dict(train=train_file, val=val_file, test=test_file,
                                                               labels=["0", "1"], names=["bad", "good"]))
    out = str(tmp_path / "out")
    run_finetune(f"--init_from={init}", "--dataset=toy", f"--out_dir={out}",
                 "--learning_rate=3e-3", "--max_iters=80", "--lr_decay_iters=80", "--warmup_iters=5",
                 "--eval_interval=40", "--batch_size=16", "--dropout=0.0")
    log = read_log(out)
    evals = [r for r in log if "val_acc" in r]
    assert evals[0]["val_acc"] < 0.7 and evals[-1]["val_acc"] >= 0.9  # 100 balanced-ish examples: chance is ~0.5
    assert "val_f1" not in evals[-1]  # macro-F1 is reported for more than two classes
    best = max(evals[1:], key=lambda r: (r["val_acc"], -r["iter"]))  # select=auto: the first eval with the best dev accuracy
    assert [(r["iter"], r["test_acc"] >= 0.9) for r in log if "test_acc" in r] == [(best["iter"], True)]
    capsys.readouterr()
    run_finetune(f"--init_from={out}", "--predict=the film was so good|the plot was bad")
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [line.split("\t")[0] for line in lines] == ["good", "bad"]
    assert all(float(line.split("\t")[1]) > 0.5 for line in lines)
    run_finetune(f"--init_from={out}", "--predict=the film was so good, ask ann@example.com", "--safe=True")
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert lines[0].endswith("\tthe film was so good, ask PI:EMAIL") and lines[1] == "safe: redacted 1 span (EMAIL 1)"


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_finetune_resume_continues_exactly(toy_setup, lora_rank, capsys):
    tmp_path, init, train_file, val_file = toy_setup
    common = [f"--init_from={init}", f"--dataset={train_file}", f"--val_dataset={val_file}", "--log_interval=1",
              "--eval_interval=100", "--lr_decay_iters=12", "--warmup_iters=2", "--dropout=0.2", "--lora_dropout=0.1",
              f"--lora_rank={lora_rank}", "--batch_size=8", "--always_save_checkpoint=True", "--learning_rate=3e-3"]
    full, split = str(tmp_path / f"full{lora_rank}"), str(tmp_path / f"split{lora_rank}")
    run_finetune(*common, f"--out_dir={full}", "--max_iters=12")
    run_finetune(*common, f"--out_dir={split}", "--max_iters=6")
    capsys.readouterr()
    run_finetune(*common, f"--out_dir={split}", "--max_iters=12", "--init_from=resume")
    assert [int(n) for n in re.findall(r"^iter (\d+):", capsys.readouterr().out, re.M)] == list(range(6, 12))  # not a fresh start
    losses = lambda out: [(r["iter"], r["loss"]) for r in read_log(out) if "loss" in r]  # noqa: E731  a list: no step twice
    assert [i for i, _ in losses(full)] == [i for i, _ in losses(split)] == list(range(12))
    for (it, loss), (_, other) in zip(losses(full), losses(split)):
        assert abs(other - loss) < 1e-6, f"step {it}: {other} != {loss}"


def test_sft_then_sample_with_the_same_template(tmp_path, capsys):
    tok = CharTokenizer(sorted(set(tokenizer.ALPACA_PROMPT + tokenizer.ALPACA_PROMPT_NO_INPUT + "xyz0123456789")))
    init = save_pretrained(tmp_path / "pretrained", tiny_gpt(True, tok.vocab_size, block_size=256), tok)
    records = [{"instruction": "say yes", "input": "", "output": "yes"}] * 30
    with open(tmp_path / "sft.json", "w") as f:
        json.dump(records, f)
    out = str(tmp_path / "sft")
    run_finetune("--task=sft", f"--init_from={init}", f"--dataset={tmp_path / 'sft.json'}", f"--out_dir={out}",
                 "--learning_rate=1e-2", "--max_iters=60", "--lr_decay_iters=60", "--warmup_iters=5",
                 "--eval_interval=30", "--batch_size=4", "--dropout=0.0")
    evals = [r for r in read_log(out) if "val_loss" in r]
    assert evals[-1]["val_loss"] < 0.1 < evals[0]["val_loss"]  # it learned the one response, per response token
    capsys.readouterr()
    sample.main([f"--out_dir={out}", "--template=alpaca", "--start=say yes", "--num_samples=1",
                 "--temperature=0", "--device=cpu", "--max_new_tokens=20"])
    text = capsys.readouterr().out
    assert text.startswith(format_prompt("say yes") + "yes\n----")  # the response, then the eot stopped it


def test_lm_task_stops_early_when_val_loss_stalls(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 400)
    prepare.main([f"--input={corpus}", "--name=lmtoy", f"--data_root={tmp_path}", "--tokenizer=char", "--curate=False"])
    from tokenizer import load_tokenizer
    tok = load_tokenizer(str(tmp_path / "lmtoy"))
    init = save_pretrained(tmp_path / "pretrained", tiny_gpt(True, tok.vocab_size), tok)
    out = str(tmp_path / "lm")
    # learning_rate 0: val loss never improves after the first eval, so patience=2 stops at the second eval after it
    run_finetune("--task=lm", f"--init_from={init}", f"--dataset={tmp_path / 'lmtoy'}", f"--out_dir={out}",
                 "--learning_rate=0.0", "--decay_lr=False", "--max_iters=100", "--eval_interval=5", "--patience=2",
                 "--batch_size=4", "--block_size=32")
    evals = [r["iter"] for r in read_log(out) if "val_loss" in r]
    assert evals == [0, 5, 10]


def test_unknown_task_and_missing_init_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="task='summarize' is not one of lm, classify, sft"):
        run_finetune("--task=summarize")
    with pytest.raises(SystemExit, match="is neither a checkpoint"):
        run_finetune(f"--init_from={tmp_path / 'nothing'}")


# --- readers ---------------------------------------------------------------------------------------

def test_labelled_lines_and_the_reviews_recipe_drop_labels(tmp_path):
    path = tmp_path / "labelled.txt"
    path.write_bytes(b"1 a fine film\n0 not good \xf0 at all\n1\n")
    stats = Counter()
    assert list(readers.read_labelled_lines(str(path), stats)) == [("1", "a fine film"), ("0", "not good \ufffd at all")]
    assert stats["invalid_utf8_chars"] == 1 and stats["skipped_no_text"] == 1
    assert list(prepare.read_sources([f"labelled:{path}"], Counter())) == ["a fine film", "not good \ufffd at all"]
    assert any(source.startswith("labelled:") for source in prepare.RECIPES["reviews"]["input"])


def test_tsv_and_jsonl_examples_are_read_and_bad_lines_counted(tmp_path):
    (tmp_path / "a.tsv").write_text("sentence\tlabel\ngreat\t1\nawful\t0\n\t1\n")
    (tmp_path / "a.jsonl").write_text('{"text": "great", "label": "pos"}\nnot json\n{"text": 3, "label": 1}\n')
    stats = Counter()
    assert list(finetune.read_examples(str(tmp_path / "a.tsv"), stats)) == [("great", "1"), ("awful", "0")]
    assert list(finetune.read_examples(str(tmp_path / "a.jsonl"), stats)) == [("great", "pos")]
    assert stats["skipped_records"] == 3


def test_sst2_and_trec_recipes_read_the_shared_data(shared_data):
    from tokenizer import gpt2_tokenizer
    tok = gpt2_tokenizer()
    cfg = type("Cfg", (), dict(dataset="sst2", val_dataset="", block_size=128, val_fraction=0.05, seed=1))
    sst2 = finetune.load_classification(cfg, tok, causal=False)
    assert len(sst2["train"]["ids"]) == 6920 and len(sst2["val"]["ids"]) == 872
    assert sum(sst2["val"]["labels"]) == 444  # positives in dev (PROVENANCE.md)
    cfg.dataset = "trec"
    trec = finetune.load_classification(cfg, tok, causal=True)
    assert len(trec["train"]["ids"]) + len(trec["val"]["ids"]) == 5452 and len(trec["test"]["ids"]) == 500
    assert 480 < len(trec["val"]["ids"]) < 610  # dev: a fixed 10% of TREC.train, never the test questions
    cfg.seed = 2
    assert finetune.load_classification(cfg, tok, causal=True)["val"] == trec["val"]  # the same dev for every seed
    assert trec["stats"]["invalid_utf8_chars"] == 1  # the stray 0xF0 byte in TREC.train
    assert Counter(trec["train"]["labels"] + trec["val"]["labels"])[trec["names"].index("DESC")] == 1162


def test_macro_f1_averages_per_class_f1():
    confusion = torch.tensor([[2, 1, 0], [0, 3, 0], [1, 0, 0]], dtype=torch.float64)  # rows: true, columns: predicted
    # F1 per class: 2*2/(2*2+1+1), 2*3/(2*3+1+0), 0 (one missed example, never predicted)
    assert finetune.macro_f1(confusion) == pytest.approx((4 / 6 + 6 / 7 + 0) / 3)
    assert finetune.macro_f1(torch.diag(torch.tensor([5.0, 0.0, 2.0]))) == 1.0  # an absent class is left out


def test_ddp_lora_classifier_equals_one_process(toy_setup):
    from test_distributed import launch
    from model import load_checkpoint
    tmp_path, init, train_file, val_file = toy_setup
    common = [f"--init_from={init}", f"--dataset={train_file}", f"--val_dataset={val_file}", "--device=cpu",
              "--dtype=float32", "--dropout=0.0", "--lora_rank=4", "--max_iters=6", "--eval_interval=3",
              "--eval_iters=3", "--batch_size=8", "--gradient_accumulation_steps=2", "--learning_rate=3e-3",
              "--always_save_checkpoint=True"]
    launch(1, *common, f"--out_dir={tmp_path / 'one'}", script="finetune.py")
    out = launch(2, *common, f"--out_dir={tmp_path / 'ddp'}", script="finetune.py")
    assert "LoRA rank 4" in out
    one, ddp = (load_checkpoint(str(tmp_path / d)) for d in ("one", "ddp"))
    for key in ("lora", "classifier", "model"):  # DDP averages gradients as accumulation does
        for name, tensor in one[key].items():
            torch.testing.assert_close(ddp[key][name], tensor, atol=1e-5, rtol=1e-4)
    evals = {d: [r for r in read_log(tmp_path / d) if "val_loss" in r] for d in ("one", "ddp")}
    assert [r["val_acc"] for r in evals["ddp"]] == [r["val_acc"] for r in evals["one"]]  # each rank scored its share
    assert [r["val_loss"] for r in evals["ddp"]] == pytest.approx([r["val_loss"] for r in evals["one"]], rel=1e-5)


# --- ULMFiT's recipe pieces: stratified subsets, per-layer learning rates, gradual unfreezing -------------

def test_train_examples_subset_is_stratified_seed_stable_and_nested():
    labels = [0] * 700 + [1] * 250 + [2] * 50  # 70% / 25% / 5%
    data = {"ids": [[i] for i in range(1000)], "labels": labels}
    for n in (20, 100, 333):
        counts = Counter(finetune.subset(data, n, seed=1)["labels"])
        for c, share in ((0, 0.70), (1, 0.25), (2, 0.05)):
            assert abs(counts[c] - share * n) <= 1, (n, counts)
    small, large = finetune.subset(data, 100, seed=1), finetune.subset(data, 300, seed=1)
    assert small == finetune.subset(data, 100, seed=1)                      # the same seed, the same examples
    assert set(map(tuple, small["ids"])) <= set(map(tuple, large["ids"]))  # nested
    assert small != finetune.subset(data, 100, seed=2)                      # another seed, another sample
    assert all(label == labels[ids[0]] for ids, label in zip(large["ids"], large["labels"]))  # pairs stay together
    assert finetune.subset(data, 0, seed=1) is data and finetune.subset(data, 5000, seed=1) is data
    unlabelled = {"ids": [[i] for i in range(50)], "targets": [[i] for i in range(50)]}  # sft: a seeded sample
    part = finetune.subset(unlabelled, 10, seed=3)
    assert len(part["ids"]) == 10 and part == finetune.subset(unlabelled, 10, seed=3) and part["ids"] == part["targets"]


def test_layer_lr_decay_scales_each_layer_down_from_the_head():
    tok = CharTokenizer(ALPHABET)
    clf = finetune.Classifier(tiny_gpt(False, tok.vocab_size, n_layer=3), n_classes=2, pool="mean", dropout=0.0,
                              layer_lr_decay=0.5)
    opt = clf.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(clf.named_parameters())
    expected = {"head.weight": 1.0, "head.bias": 1.0, "gpt.transformer.ln_f.weight": 1.0,
                "gpt.transformer.h.2.attn.c_attn.weight": 0.5, "gpt.transformer.h.2.ln_1.weight": 0.5,
                "gpt.transformer.h.1.mlp.c_fc.weight": 0.25, "gpt.transformer.h.0.mlp.c_proj.weight": 0.125,
                "gpt.transformer.wte.weight": 0.0625, "gpt.transformer.wpe.weight": 0.0625}
    for name, scale in expected.items():
        assert scale_of[id(named[name])] == pytest.approx(scale), name
    assert sorted(scale_of) == sorted(id(p) for p in clf.parameters() if p.requires_grad)  # each trainable one, once
    assert decay_of[id(named["head.weight"])] == 0.1 and decay_of[id(named["head.bias"])] == 0.0  # GPT's decay groups kept
    # the scale is what Trainer applies: one step at lr 1e-3 moves a block-0 weight by lr * 0.125 (Adam's first step: lr * sign)
    for g in opt.param_groups:
        g["lr"] = 1e-3 * g["lr_scale"]
        g["weight_decay"] = 0.0
    before = named["gpt.transformer.h.0.mlp.c_fc.weight"].detach().clone()
    clf(torch.randint(0, tok.vocab_size - 5, (4, 10)), labels=torch.tensor([0, 1, 0, 1]))[1].backward()
    opt.step()
    moved = (named["gpt.transformer.h.0.mlp.c_fc.weight"].detach() - before).abs()
    assert moved.max().item() == pytest.approx(1e-3 * 0.125, rel=1e-3)
    plain = finetune.Classifier(tiny_gpt(False, tok.vocab_size), 2, "mean", 0.0).configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    assert len(plain.param_groups) == 2  # without the recipe: GPT.configure_optimizers' groups, untouched


def test_gradual_unfreezing_trains_one_more_layer_down_every_k_steps(toy_setup):
    tmp_path, init, train_file, val_file = toy_setup
    start = finetune.load_checkpoint(init)["model"]
    changed = {}
    for steps in (5, 7):  # 2 blocks: the head from step 0, block 1 from step 3, block 0 from 6, the embeddings from 9
        out = str(tmp_path / f"unfreeze{steps}")
        run_finetune(f"--init_from={init}", f"--dataset={train_file}", f"--val_dataset={val_file}", f"--out_dir={out}",
                     "--unfreeze_every=3", f"--max_iters={steps}", "--lr_decay_iters=7", "--warmup_iters=0",
                     "--eval_interval=100", "--batch_size=8", "--always_save_checkpoint=True", "--dropout=0.0",
                     "--learning_rate=1e-2")
        end = finetune.load_checkpoint(out)["model"]
        changed[steps] = {k for k in start if not torch.equal(start[k], end[k])}
    blocks = lambda keys, i: {k for k in keys if k.startswith(f"transformer.h.{i}.")}  # noqa: E731
    assert blocks(changed[5], 1) and not blocks(changed[5], 0)
    assert blocks(changed[7], 1) and blocks(changed[7], 0)
    assert not {"transformer.wte.weight", "transformer.wpe.weight"} & changed[7]  # their turn is step 9
    assert {"transformer.ln_f.weight"} <= changed[5]  # the final norm trains with the head from step 0


def test_classifier_checkpoint_is_chosen_by_dev_accuracy(toy_setup):
    tmp_path, init, train_file, val_file = toy_setup
    out = str(tmp_path / "select")
    run_finetune(f"--init_from={init}", f"--dataset={train_file}", f"--val_dataset={val_file}", f"--out_dir={out}",
                 "--learning_rate=3e-3", "--max_iters=60", "--lr_decay_iters=60", "--warmup_iters=5",
                 "--eval_interval=10", "--batch_size=16", "--dropout=0.0")
    evals = [r for r in read_log(out) if "val_acc" in r]
    best = max(evals[1:], key=lambda r: (r["val_acc"], -r["iter"]))  # the first eval with the best accuracy
    assert finetune.load_checkpoint(out)["iter_num"] == best["iter"]
    assert all(r["val_error"] == pytest.approx(1 - r["val_acc"]) for r in evals)
    with pytest.raises(SystemExit, match="select=acc needs task=classify"):
        run_finetune(f"--init_from={init}", "--task=sft", "--select=acc")
    with pytest.raises(SystemExit, match="need task=classify"):
        run_finetune(f"--init_from={init}", "--task=sft", "--unfreeze_every=5")


def test_instructions_source_skips_the_records_sft_holds_out(tmp_path):
    records = [{"instruction": f"task {i}", "input": "x" if i % 2 else "", "output": f"answer {i}"} for i in range(200)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(records))
    stats = Counter()
    docs = list(prepare.read_sources([f"instructions:{path}"], stats))
    held = {i for i in range(200) for seed in corpora.SFT_HELD_OUT["seeds"]
            if prepare.in_val_split(i, corpora.SFT_HELD_OUT["val_fraction"], seed)}
    assert 0 < len(held) < 60 and stats["sft_held_out_skipped"] == len(held)
    assert docs == [f"task {i}\n\nx\n\nanswer {i}" if i % 2 else f"task {i}\n\nanswer {i}" for i in range(200) if i not in held]
    for seed in corpora.SFT_HELD_OUT["seeds"]:  # what sft holds out by default under each of those seeds is skipped
        assert {i for i in range(200) if prepare.in_val_split(i, finetune.DEFAULTS["val_fraction"], seed)} <= held
