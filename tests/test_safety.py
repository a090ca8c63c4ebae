import codecs
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch

import prepare
import safety
import sample
import train
from configurator import configure
from curate import roots_resources, words_of
from pii import redact_pii
from test_train import TINY
from model import GPTConfig, build_model
from safety import HAN
from tokenizer import CharTokenizer, build_tokenizer, gpt2_tokenizer

EN = sorted(roots_resources().flagged["en"])
ALL = sorted(safety.flagged_words("und"))
CORPUS = "we like porn a lot. mail bob@example.com now. analysis is fun.\n"


def reference_pattern(words):
    """safety.py's rule written the obvious way, as two regexes with an alternative per entry: (without, with)
    the end of the text counting as the edge that completes a word. A whole-word entry needs an edge
    (whitespace, an edge special, Han) or the start before it and an edge after it; its words are joined by
    runs of edges. Han entries match anywhere."""
    edges = "".join(re.escape(c) for c in sorted(safety.FlaggedWordAutomaton([]).edge_special))
    edge, not_edge = f"[\\s{edges}{HAN}]", f"[^\\s{edges}{HAN}]"
    han = [re.escape(w.lower()) for w in words if re.search(f"[{HAN}]", w)]
    whole = [f"{edge}+".join(map(re.escape, w.lower().split())) for w in words if not re.search(f"[{HAN}]", w)]
    return [re.compile("|".join(han + [f"(?<!{not_edge})(?:{'|'.join(whole)}){after}"]))
            for after in (f"(?={edge})", f"(?={edge}|\\Z)")]


def reference_complete(pattern, text, at_end):
    """Does `text` hold a complete flagged entry? (search tries every start and every alternative)"""
    return pattern[at_end].search(text.lower()) is not None


def run_automaton(auto, text):
    """(index of the first character that completes a flagged word or None, pending after each character)."""
    q, pending = auto.start, []
    for i, ch in enumerate(text):
        for b in ch.encode():
            q, violated = auto.step_byte(q, b)
            if violated:
                return i, pending
        pending.append(auto.pending[q])
    return None, pending


@pytest.mark.parametrize("text, completes", [
    ("porn ", True), ("Porn!", True), ("(porn) ok", True), ("a(porn) x", True), ("porn.com", True), ("porn2", True),
    ("PORN\tx", True), ("pornography is", False), ("analysis ", False), ("cumulative ", False), ("cocktail.", False),
    ("Kporn ", False), ("x porn", False),  # the last: complete only when the text ends (pending)
])
def test_flagged_words_count_only_as_whole_words(text, completes):
    auto = safety.FlaggedWordAutomaton(EN)
    first, _ = run_automaton(auto, text)
    assert (first is not None) == completes


def test_several_word_and_chinese_entries():
    auto = safety.FlaggedWordAutomaton(roots_resources().flagged["vi"] | roots_resources().flagged["zh"])
    assert run_automaton(auto, "xem phim sex nhé")[0] == 12       # vi "phim sex", completed by the space
    assert run_automaton(auto, "xem phim, \n sex.")[0] == 15      # any run of edges between its words
    assert run_automaton(auto, "xem phim sexy")[0] is None
    assert run_automaton(auto, "他们口交了")[0] == 3                  # zh: anywhere, at its last character
    assert run_automaton(auto, "看porn视频")[0] == 5                  # a Han character ends a Latin word


def test_automaton_agrees_with_the_reference_on_random_text():
    flagged = roots_resources().flagged
    words = EN + sorted(w for w in flagged["vi"] if " " in w) + sorted(w for w in flagged["zh"] if re.search(f"[{HAN}]", w)) + ["बट"]
    auto, pattern = safety.FlaggedWordAutomaton(words), reference_pattern(words)
    pieces = ["porn", "porno", "anal", "analysis", "cum", "phim", "sex", "口交", "口", "看", "Porn", "xxx", "a", "s",
              " ", "  ", "\n", ".", ",", "!", "'", "-", "2", "(", "π", "ा", "बट", "é"]
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
        first, pending = run_automaton(auto, text)
        expected = next((i for i in range(len(text)) if reference_complete(pattern, text[:i + 1], False)), None)
        assert first == expected, text
        assert pending == [reference_complete(pattern, text[:i + 1], True) for i in range(len(pending))], text


def test_every_word_roots_would_flag_is_caught():
    """ROOTS' own definition (curate.words_of): whitespace runs, lower-cased, special characters stripped."""
    res = roots_resources()
    auto = safety.FlaggedWordAutomaton(EN)
    rng = random.Random(1)
    pieces = ["porn", "anal", "xxx", "milf", "...", "'", '"', "(", ")", "1", "!", "-", "pre", "s", "ing"]
    caught = 0
    for _ in range(500):
        words = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        text = " ".join(words) + " "
        if set(words_of(text, res, lower=True)) & set(EN):
            assert run_automaton(auto, text)[0] is not None, text
            caught += 1
    assert caught > 50


def brute_force_masks(tok, words, pattern, prefix_ids):
    """What FlaggedWordMasks.masks must give after prefix_ids, token by token, with the reference
    (asked only where the text holds the first word of some entry: it cannot match elsewhere)."""
    prefix, firsts = tok.decode_bytes(prefix_ids), {w.lower().split()[0] for w in words}
    violates, pending = np.zeros(tok.vocab_size, bool), np.zeros(tok.vocab_size, bool)
    special = set(tok.special_ids.values())
    at_end = reference_complete(pattern, prefix.decode("utf-8", "replace"), True)
    for t in range(tok.vocab_size):
        if t in special:
            violates[t] = at_end
            continue
        data = prefix + tok.decode_bytes([t])
        lowered = data.decode("utf-8", "replace").lower()
        if not any(w in lowered for w in firsts):
            continue
        violates[t] = reference_complete(pattern, codecs.getincrementaldecoder("utf-8")("replace").decode(data), False)
        pending[t] = not violates[t] and reference_complete(pattern, data.decode("utf-8", "replace"), True)
    return violates, pending


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_token_masks_agree_with_brute_force(kind):
    text = "we like porn, not analysis. the cum laude anal! 口交 pornography\n" * 20
    tok = {"char": lambda: CharTokenizer.from_text(text),
           "bpe": lambda: build_tokenizer("bpe", [text], vocab_size=320, min_frequency=2, progress=False),
           "gpt2": gpt2_tokenizer}[kind]()
    words = EN + ["口交"]
    masks, pattern = safety.FlaggedWordMasks(tok, words), reference_pattern(words)
    prefixes = [tok.encode(p) for p in ["we like porn", "the cu", "口"]]
    prefixes.append(tok.encode("口交")[:-1])  # for GPT-2, "口" and the first bytes of "交": a character half done
    if kind != "gpt2":  # (each prefix checks every token: GPT-2's 50,257 take a few seconds)
        prefixes += [tok.encode(p) for p in ["we like", "not anal", "a pornograph"]]
    for ids in prefixes:
        prefix = tok.decode(ids)
        q = masks.auto.start
        for t in ids:  # generated, not a prompt: nothing is owned
            q = masks.advance(q, t)
        violates, pending = masks.masks(q)
        ref_violates, ref_pending = brute_force_masks(tok, words, pattern, ids)  # GPT-2's 50,257 tokens too
        assert (violates == ref_violates).all(), (prefix, [tok.decode([i]) for i in np.flatnonzero(violates != ref_violates)][:10])
        assert (pending[~violates] == ref_pending[~violates]).all(), prefix
    if kind == "char":  # after "we like porn" the space and the full stop would complete it
        q = masks.absorb([])
        for t in tok.encode("we like porn"):
            q = masks.advance(q, t)
        assert {tok.decode([i]) for i in np.flatnonzero(masks.masks(q)[0])} >= {" ", ".", ",", "\n", "<|endoftext|>"}


def test_a_prompts_own_complete_word_is_not_held_against_the_model():
    tok = CharTokenizer.from_text("porn os.")
    masks = safety.FlaggedWordMasks(tok, EN)
    q = masks.absorb(tok.encode("porn"))
    assert not masks.masks(q)[0].any()                                   # the prompt's word: a space may follow
    q = masks.advance(q, tok.encode("o")[0])
    assert masks.masks(q)[0][tok.encode(" ")[0]]                         # "porno" is the model's


def test_filter_masks_counts_and_leaves_finished_rows_alone():
    tok = CharTokenizer.from_text("porn ax.")
    masks = safety.FlaggedWordMasks(tok, EN)
    space = tok.encode(" ")[0]
    f = safety.FlaggedWordFilter(masks, steps=10, stop_token=tok.encode("x")[0])
    V = tok.vocab_size + 3  # a padded model vocabulary
    seq = torch.tensor([tok.encode("porn"), tok.encode("porn")])
    f(seq, torch.zeros(2, V))                                            # the prompt's own word: nothing masked
    assert f.masked == 0
    seq = torch.cat([seq, torch.tensor([[tok.encode("o")[0]], [tok.encode("x")[0]]])], dim=1)  # row 1 stops
    logits = torch.zeros(2, V)
    logits[:, space] = 5.0                                               # the model's first choice: a space
    out = f(seq, logits)
    expected = masks.masks(masks.advance(masks.absorb(tok.encode("porn")), tok.encode("o")[0]))[0]
    assert expected[space] and expected[tok.encode(".")[0]] and not expected[tok.encode("a")[0]]
    assert torch.isinf(out[0, :tok.vocab_size]).tolist() == expected.tolist() and not torch.isinf(out[1]).any()
    assert (f.masked, f.masked_steps, f.first_choices) == (expected.sum(), 1, 1)


def test_last_step_masks_tokens_that_leave_a_word_complete():
    tok = CharTokenizer.from_text("a porn s")
    masks = safety.FlaggedWordMasks(tok, EN)
    q = masks.advance(masks.advance(masks.advance(masks.absorb(tok.encode("a ")), tok.encode("p")[0]),
                                    tok.encode("o")[0]), tok.encode("r")[0])
    n = tok.encode("n")[0]
    assert not masks.blocked(q, False, tok.vocab_size, "cpu")[1][n] and masks.blocked(q, True, tok.vocab_size, "cpu")[1][n]


@pytest.mark.parametrize("phone", [False, True])
def test_streaming_redaction_equals_redacting_the_whole_text(phone):
    kinds = safety.pii_kinds(phone)
    rng = random.Random(2)
    pieces = list("ab1.@-: \n,x9(+/=Z_7v") + ["version ", "bob@ex.com", "192.168.0.1", "+1 555 123 4567", "@alice",
                                               "aB3dE5fG7hI9jK1lM3nO5", "2001:db8::1", "v 1.2.3.4", "写信",
                                               "123 ", "4567", "AB12", "315 316 ", "1999 ", "978-0-306-40615-7"]
    for _ in range(600):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 60)))
        redactor, out, i = safety.PiiRedactor(kinds), [], 0
        while i < len(text):
            n = rng.randint(1, 5)
            out.append(redactor.feed(text[i:i + n]))
            i += n
        out.append(redactor.finish())
        whole, found = redact_pii(text, kinds)
        assert "".join(out) == whole, text
        assert redactor.found == found


def test_streaming_redaction_holds_back_only_what_may_still_be_a_match():
    redactor = safety.PiiRedactor()
    assert redactor.feed("write to bo") == "write to "
    assert redactor.feed("b@example.co") == ""
    assert redactor.feed("m, thanks") == "PI:EMAIL, "
    assert redactor.finish() == "thanks" and redactor.found == Counter(EMAIL=1)


@pytest.fixture(scope="module")
def spelling_model(tmp_path_factory):
    """A tiny char model that has learned to spell a flagged word and an e-mail address (about 10 s)."""
    root = tmp_path_factory.mktemp("safe")
    (root / "t.txt").write_text(CORPUS * 300)
    prepare.main([f"--input={root}/t.txt", "--name=t", f"--data_root={root}", "--curate=False"])
    train.main([*TINY, f"--dataset={root}/t", f"--out_dir={root}/out", "--max_iters=150", "--eval_interval=150",
                "--n_embd=64", "--n_head=4", "--learning_rate=1e-2", "--batch_size=16", "--weight_decay=0"])
    return str(root / "out")


def generated(out, prompt):
    """The sample texts of sample.py's stdout, each without its prompt."""
    return [s.strip("\n")[len(prompt):] for s in out.split("-" * 40) if s.strip("\n")]


def test_safe_sampling_emits_no_flagged_word_and_no_email(spelling_model, capsys):
    pattern = reference_pattern(ALL)
    args = [f"--out_dir={spelling_model}", "--start=we like", "--max_new_tokens=130", "--device=cpu"]
    sample.main([*args, "--temperature=0", "--num_samples=1"])
    plain = capsys.readouterr().out
    assert "porn a lot" in plain and "bob@example.com" in plain  # the model has learned both
    for options in (["--temperature=0", "--num_samples=1"], ["--temperature=1.0", "--num_samples=4", "--seed=3"]):
        sample.main([*args, *options, "--safe=True"])
        captured = capsys.readouterr()
        texts = generated(captured.out, "we like")
        assert len(texts) == int(options[1].split("=")[1])
        for text in texts:
            assert not reference_complete(pattern, text, at_end=True), text
        assert "@example.com" not in captured.out and "PI:EMAIL" in captured.out
        summary = re.search(r"masked ([\d,]+) tokens at (\d+) steps \((\d+) times the model's first choice\), "
                            r"redacted (\d+) spans? \(EMAIL (\d+)\)", captured.err)
        assert summary, captured.err
        masked, steps, first, redacted, emails = (int(g.replace(",", "")) for g in summary.groups())
        assert masked >= steps >= first and redacted == emails == captured.out.count("PI:EMAIL")
    greedy = generated(plain, "we like")[0]
    assert "analysis" in greedy  # "anal" inside a longer word is not blocked ...
    sample.main([*args, "--temperature=0", "--num_samples=1", "--safe=True"])
    assert "analysis" in capsys.readouterr().out  # ... with the option either
    assert first >= 1


def test_safe_sample_does_not_end_on_a_flagged_word(spelling_model, capsys):
    sample.main([f"--out_dir={spelling_model}", "--start=we like p", "--max_new_tokens=3", "--temperature=0",
                 "--num_samples=1", "--device=cpu", "--safe=True"])
    out = capsys.readouterr().out
    assert out.startswith("we like p") and not out.startswith("we like porn\n")
    sample.main([f"--out_dir={spelling_model}", "--start=we like p", "--max_new_tokens=3", "--temperature=0",
                 "--num_samples=1", "--device=cpu"])
    assert capsys.readouterr().out.startswith("we like porn\n")


def test_train_sample_with_safe(spelling_model, capsys):
    cfg = configure(train.DEFAULTS, ["--device=cpu", "--dtype=float32", "--sample_tokens=130", "--safe=True"], verbose=False)
    system = train.setup_system(cfg)
    model, tok, _ = sample.load_for_inference(spelling_model, "cpu")
    train.print_sample(model, tok, cfg, system)
    out = capsys.readouterr().out
    assert "safe (" in out and "@example.com" not in out
    assert not reference_complete(reference_pattern(ALL), out.split("-" * 40)[1], at_end=True)


def test_encoder_decoder_output_is_filtered_too():
    """An encoder-decoder's output starts at <|endoftext|>, a text of its own; pushed to write "porn " it
    cannot finish the word, and without the filter it does."""
    tok = CharTokenizer.from_text("porn a.")
    torch.manual_seed(0)
    model = build_model(GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=1, n_decoder_layer=1, n_head=2,
                                  n_embd=16, causal=False)).eval()
    target = tok.encode("porn ")

    def push(seq, logits):  # the output so far, after its start token, decides the next letter of "porn "
        k = seq.size(1) - 1
        logits[:, target[k % len(target)]] += 100.0
        return logits

    start = torch.tensor([[tok.special_ids["<|endoftext|>"]]])
    src = torch.tensor([tok.encode("a.")])
    for safe in (False, True):
        f = safety.FlaggedWordFilter(safety.FlaggedWordMasks(tok, EN), steps=6)
        out = model.generate(src, 6, decoder_idx=start, temperature=0,
                             logits_processor=(lambda s, x: f(s, push(s, x))) if safe else push)
        text = tok.decode(out[0, 1:].tolist())
        assert text.startswith("porn") and (text[4] != " ") == safe, text
    assert f.masked_steps == 1  # (safe) only the step after "porn"
