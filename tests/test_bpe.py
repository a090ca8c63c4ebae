"""Our byte-level BPE: the trainer against a naive reference, tiktoken encoding, specials, files, recipes."""

import functools
import gzip
import http.server
import inspect
import json
import os
import random
import shutil
import threading
from collections import Counter

import numpy as np
import pytest
import tiktoken_ext.openai_public
import torch

import prepare
import readers
from configurator import configure
from dataset import DataError, in_val_split, read_bin
from conftest import ROOT
from tokenizer import (EOT, GPT4_PATTERN, SPECIAL_TOKENS, TokenizerError, bpe_ranks, build_tokenizer, chunk_counts,
                       load_tokenizer, tokenizer_from_spec, train_bpe)

with open(os.path.join(ROOT, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
    SHAKESPEARE = f.read()
CUT = len(SHAKESPEARE) * 9 // 10  # train on the first 90%, measure on the rest
# 李白《靜夜思》 and 孟浩然《春曉》 (public domain), in the traditional script of the Tang poems corpus
CHINESE = "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。\n春眠不覺曉，處處聞啼鳥。\n夜來風雨聲，花落知多少。\n"


@pytest.fixture(scope="module")
def tok():
    """English and Chinese, vocab 1024: the issue's size for the English compression check."""
    return build_tokenizer("bpe", [SHAKESPEARE[:CUT], CHINESE * 20], vocab_size=1024, progress=False)


# -----------------------------------------------------------------------------
# a naive reference: recount every pair of every word for every merge (minbpe's training loop)

def naive_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if ids[i:i + 2] == list(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def naive_train(counts, n_tokens, min_frequency):
    words = [(list(chunk), n) for chunk, n in counts.items()]
    merges = []
    while 256 + len(merges) < n_tokens:
        stats = {}
        for ids, n in words:
            for pair in zip(ids, ids[1:]):
                stats[pair] = stats.get(pair, 0) + n
        if not stats:
            break
        best = min(stats, key=lambda p: (-stats[p], p))  # most frequent, then smallest ids
        if stats[best] < min_frequency:
            break
        merges.append(list(best))
        words = [(naive_merge(ids, best, 255 + len(merges)), n) for ids, n in words]
    return merges


def naive_encode_chunk(chunk, merges):
    """BPE of one chunk by applying the merges in training order."""
    ids = list(chunk)
    for n, pair in enumerate(merges):
        ids = naive_merge(ids, pair, 256 + n)
    return ids


def test_pattern_is_gpt4s_cl100k():
    assert f'r"""{GPT4_PATTERN}"""' in inspect.getsource(tiktoken_ext.openai_public.cl100k_base)


def test_pretokenisation_keeps_han_runs_together_and_splits_numbers_by_three():
    chunks = list(chunk_counts(["秦川雄帝宅，函谷壯皇居。\n 12345 I'm"]))
    assert [c.decode() for c in chunks] == ["秦川雄帝宅", "，函谷壯皇居", "。\n", " ", "123", "45", " I", "'m"]


def test_incremental_trainer_merges_equal_naive_reference():
    text = SHAKESPEARE[:20000] + CHINESE * 5 + " aaaaaaa aaaa aaa abab ababab 1234567 ok ok"
    counts = chunk_counts([text])
    merges = train_bpe(counts, 256 + 300, min_frequency=2, progress=False)
    assert len(merges) == 300
    assert merges == naive_train(counts, 256 + 300, min_frequency=2)
    # a corpus that runs out of pairs seen twice: both stop at the same merge
    small = chunk_counts(["the cat sat on the mat; the hat"])
    merges = train_bpe(small, 256 + 50, min_frequency=2, progress=False)
    assert 0 < len(merges) < 50
    assert merges == naive_train(small, 256 + 50, min_frequency=2)


def test_ties_go_to_the_smallest_pair():
    counts = {b"cd": 3, b"ab": 3, b"xy": 1}
    assert train_bpe(counts, 256 + 3, min_frequency=1, progress=False) == [[97, 98], [99, 100], [120, 121]]


def test_tiktoken_encoding_applies_the_merges_in_training_order(tok):
    held_out = SHAKESPEARE[CUT:CUT + 20000] + CHINESE + "naïve café 2024年 🎉"
    for chunk in chunk_counts([held_out]):
        assert tok.enc.encode_ordinary(chunk.decode()) == naive_encode_chunk(chunk, tok.merges)


def test_round_trip_on_arbitrary_unicode(tok):
    texts = ["First Citizen:\nBefore we proceed any further, hear me speak.",
             CHINESE, "简体中文：今天天气很好！", "mixed 中英 text, numbers 1234567.89 and tabs\t\t",
             "emoji 👩‍👩‍👧 🇨🇳 🎉", "control \x00\x01\x07\x1b[31m\x7f\r\n end", "combining é and ́ alone",
             "עברית العربية Русский हिन्दी", "", " ", "\n\n\n", "<|endoftext|>[MASK] as plain text"]
    rng = random.Random(0)
    for _ in range(200):  # random code points from every plane, surrogates excluded
        texts.append("".join(chr(rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0x80, 0xd800),
                                             rng.randrange(0xe000, 0x110000)])) for _ in range(rng.randrange(1, 30))))
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    # lone surrogates cannot be UTF-8: they come back as U+FFFD, as tiktoken does
    assert tok.decode(tok.encode("a\ud800b\udfff")) == "a\ufffdb\ufffd"


def test_english_compresses_better_than_two_bytes_per_token_at_vocab_1024(tok):
    held_out = SHAKESPEARE[CUT:]
    assert tok.vocab_size == 1024
    assert len(held_out.encode()) / len(tok.encode(held_out)) > 2.0


def test_special_tokens_never_split_and_never_learned():
    text = f"one{EOT}two [MASK] three[CLS]four[SEP][PAD]" * 50 + SHAKESPEARE[:5000]
    tok = build_tokenizer("bpe", [text], vocab_size=400, progress=False)
    learned = list(bpe_ranks(tok.merges))[256:]
    assert len(learned) == 400 - 256 - len(SPECIAL_TOKENS)
    assert not any(part in token for token in learned for part in (b"endoftext", b"MASK", b"CLS", b"SEP", b"PAD", b"<|"))
    assert list(tok.special_ids) == SPECIAL_TOKENS and min(tok.special_ids.values()) == 256 + len(learned)
    glued = f"x{EOT}y[MASK]z"
    ids = tok.encode(glued, allow_special=True)
    assert ids == tok.encode("x") + [tok.special_ids[EOT]] + tok.encode("y") + [tok.special_ids["[MASK]"]] + tok.encode("z")
    plain = tok.encode(glued)  # not allowed: the strings are ordinary text
    assert not set(plain) & set(tok.special_ids.values()) and tok.decode(plain) == glued


def test_save_load_round_trip_gives_identical_encodings(tok, tmp_path):
    text = SHAKESPEARE[CUT:CUT + 5000] + CHINESE + f"{EOT}[MASK]"
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tok.spec(), separators=(",", ":")), encoding="utf-8")
    assert path.stat().st_size < 20_000  # merges as id pairs: a small file
    loaded = tokenizer_from_spec(json.loads(path.read_text(encoding="utf-8")))
    assert loaded.spec() == tok.spec() and loaded.vocab_size == tok.vocab_size
    assert loaded.encode(text, allow_special=True) == tok.encode(text, allow_special=True)
    # checkpoints store the spec too, and are loaded as data only
    torch.save({"tokenizer": tok.spec()}, tmp_path / "ckpt.pt")
    spec = torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"]
    assert spec == tok.spec() and tokenizer_from_spec(spec).encode(text) == tok.encode(text)


def test_bad_vocab_size_and_corrupt_files_say_what_to_do():
    with pytest.raises(TokenizerError, match="use at least 261"):
        build_tokenizer("bpe", ["some text"], vocab_size=100)
    spec = build_tokenizer("bpe", [SHAKESPEARE[:2000]], vocab_size=300, progress=False).spec()
    with pytest.raises(TokenizerError, match="corrupt"):
        tokenizer_from_spec(spec | {"merges": [[0, 1], [500, 2]]})
    with pytest.raises(TokenizerError, match="lacks"):
        tokenizer_from_spec({"kind": "bpe", "merges": []})


# -----------------------------------------------------------------------------
# prepare.py: fitting on the train split, the Tang poems recipe

def test_bpe_is_fitted_on_the_train_split_only(tmp_path):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(40)) for _ in range(60)]
    val = [i for i in range(len(docs)) if in_val_split(i, 0.1, 1337)]
    assert val
    for i in val:  # a word only validation documents contain, frequent enough to be merged if seen
        docs[i] += " qzqzqzqz" * 30
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    cfg = configure(prepare.DEFAULTS, [f"--input={path}", "--name=docs", f"--data_root={tmp_path}",
                                               "--tokenizer=bpe", "--vocab_size=400", "--curate=False"], verbose=False)
    prepare.prepare(cfg)
    tok = load_tokenizer(tmp_path / "docs")
    train = tok.decode(np.fromfile(tmp_path / "docs" / "train.bin", dtype=np.uint16)).split(EOT)[:-1]
    assert train == prepare.train_split_texts(docs, 0.1, 1337) == [d for i, d in enumerate(docs) if i not in val]
    assert not any(b"qz" in token for token in bpe_ranks(tok.merges))
    # a byte budget keeps a deterministic sample of the train documents
    sample = prepare.train_split_texts(docs, 0.1, 1337, max_bytes=2000)
    assert sample == prepare.train_split_texts(docs, 0.1, 1337, max_bytes=2000)
    assert 0 < sum(len(d) for d in sample) <= 2000 and set(sample) < set(train)


def test_bpe_after_curation_is_fitted_on_the_kept_train_documents(shared_data, tmp_path):
    c4 = os.path.join(shared_data, "clean_text_sample", "c4_demo.jsonl")
    cfg = configure(prepare.DEFAULTS, [f"--input={c4}", "--name=c4", f"--data_root={tmp_path}", "--tokenizer=bpe",
                                       "--vocab_size=600", "--lang=en", "--keep_text=True",
                                       # the BPE is fitted before the boilerplate cuts (README, stage 8)
                                       "--template_lines=False", "--substring_dedup=False"], verbose=False)
    meta = prepare.prepare(cfg)
    with gzip.open(tmp_path / "c4" / "clean.jsonl.gz", "rt", encoding="utf-8") as f:
        kept = [json.loads(line) for line in f]
    assert 0 < len(kept) < 300 and meta["train_docs"] + meta["val_docs"] == len(kept)  # curation removed some
    tok = load_tokenizer(tmp_path / "c4")
    train = tok.decode(read_bin(str(tmp_path / "c4"), "train", meta)[:]).split(EOT)[:-1]
    expected = [k["text"] for k in kept if not in_val_split(k["doc"], 0.1, 1337)]  # split by the input index
    assert tok.vocab_size == 600 and train == expected
    assert tok.spec() == build_tokenizer("bpe", expected, vocab_size=600, progress=False).spec()


def test_json_arrays_give_one_document_per_record(tmp_path):
    records = [{"text": "plain"}, {"title": "春曉", "author": "孟浩然", "paragraphs": ["春眠不覺曉，處處聞啼鳥。"]},
               {"other": 1}, "not a record", {"text": "lone \ud800 surrogate"}]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records), encoding="utf-8")  # json escapes the surrogate as \\ud800
    stats = Counter()
    assert list(readers.read_path(str(path), stats)) == ["plain", "春曉\n孟浩然\n春眠不覺曉，處處聞啼鳥。",
                                                         "lone \ufffd surrogate"]
    assert stats == {"skipped_no_text_field": 2, "lone_surrogates": 1}
    path.write_text('{"text": "an object, not an array"}', encoding="utf-8")
    with pytest.raises(DataError, match="not an array"):
        list(readers.read_path(str(path), Counter()))


def prepare_tang_poems(tmp_path, *args):
    cfg = configure(prepare.DEFAULTS, ["tang_poems", f"--data_root={tmp_path}", *args], positional="recipe", verbose=False)
    return prepare.prepare(cfg)


def test_tang_poems_recipe_char_and_bpe(shared_data, tmp_path):
    meta = prepare_tang_poems(tmp_path)
    assert meta["tokenizer"]["kind"] == "char" and meta["train_docs"] + meta["val_docs"] == 6003
    tok = load_tokenizer(tmp_path / "tang_poems")
    split = "val" if in_val_split(0, 0.1, 1337) else "train"
    text = tok.decode(np.fromfile(tmp_path / "tang_poems" / f"{split}.bin", dtype=meta["dtype"]))
    assert text.startswith("帝京篇十首 一\n太宗皇帝\n秦川雄帝宅，函谷壯皇居。\n綺殿千尋起，離宮百雉餘。\n")
    meta = prepare_tang_poems(tmp_path, "--tokenizer=bpe", "--vocab_size=512", "--tokenizer_train_bytes=300000")
    tok = load_tokenizer(tmp_path / "tang_poems_bpe")
    assert tok.kind == "bpe" and tok.vocab_size == meta["vocab_size"] == 512
    val = np.fromfile(tmp_path / "tang_poems_bpe" / "val.bin", dtype=meta["dtype"]).tolist()
    assert "，" in tok.decode(val) and len(tok.decode_bytes(val)) / len(val) > 1.5


def test_tang_poems_downloads_when_shared_data_is_absent(shared_data, tmp_path, monkeypatch):
    """The raw GitHub URLs, served by a local http.server: downloaded, sha256-checked, read."""
    served = tmp_path / "served"
    served.mkdir()
    for name in prepare.TANG_POEMS_SHA256:
        shutil.copy(os.path.join(shared_data, "chinese_poetry", name), served / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(prepare, "TANG_POEMS_DIR", str(tmp_path / "absent"))
        monkeypatch.setattr(prepare, "TANG_POEMS_URL", f"http://127.0.0.1:{server.server_port}/")
        monkeypatch.delenv("NANOROOTS_MIRROR", raising=False)
        meta = prepare_tang_poems(tmp_path / "a")
        assert meta["train_docs"] + meta["val_docs"] == 6003 and meta["source"].startswith("http://127.0.0.1")
        with open(served / "poet.tang.0.json", "ab") as f:  # a changed file fails its pinned sha256
            f.write(b" ")
        with pytest.raises(DataError, match="sha256"):
            prepare_tang_poems(tmp_path / "b")
    finally:
        server.shutdown()
        server.server_close()


def test_bench_tokenizers_rows(monkeypatch):
    import bench
    corpora = {"Shakespeare": ("en", [SHAKESPEARE[:30000]], [SHAKESPEARE[CUT:CUT + 10000]]),
               "poems": ("zh", [CHINESE * 30], [CHINESE])}
    monkeypatch.setattr(bench, "tokenizer_corpora", lambda: corpora)
    rows = bench.bench_tokenizers(vocab_sizes=(300,), mixed_vocab_sizes=(400,))
    value = {(r["benchmark"], r["metric"]): r["value"] for r in rows}
    english = {k[0].split(": ")[1]: v for k, v in value.items() if k[0].startswith("Shakespeare (en")}
    assert english["char"] == 1.0 and 1.2 < english["bpe 300 (own)"] < english["bpe 400 (en+zh)"] < english["gpt2"]
    chinese = {k[0].split(": ")[1]: v for k, v in value.items() if k[0].startswith("poems (zh")}
    assert chinese["char"] == len(CHINESE.encode()) / len(CHINESE) and chinese["bpe 300 (own)"] > chinese["gpt2"]
    metrics = [k[1] for k in value]
    assert metrics.count("s") == metrics.count("CPU s") == 3 and metrics.count("MB/s") == metrics.count("MB/CPU s") == 4
    assert all(v > 0 for v in value.values())


def test_bpe_data_trains_resumes_and_samples(tmp_path, capsys):
    """The tokenizer spec travels prepare -> tokenizer.json -> checkpoint -> resume check -> sample.py."""
    import sample
    import train
    from model import load_checkpoint
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": SHAKESPEARE[i:i + 2000]}) + "\n" for i in range(0, 60_000, 2000)))
    prepare.main([f"--input={path}", "--name=bpe_docs", f"--data_root={tmp_path}", "--tokenizer=bpe", "--vocab_size=400",
                  "--curate=False"])
    data, out = str(tmp_path / "bpe_docs"), str(tmp_path / "out")
    tiny = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--eval_iters=1",
            "--eval_interval=2", "--max_time=0", "--device=cpu", "--dtype=float32", "--sample_tokens=5", "--threads=1",
            "--always_save_checkpoint=True", f"--dataset={data}", f"--out_dir={out}"]
    train.main([*tiny, "--max_iters=2"])
    train.main([*tiny, "--max_iters=4", "--init_from=resume"])  # resume compares the checkpoint's spec with the data's
    ckpt = load_checkpoint(out)
    assert ckpt["iter_num"] == 4 and ckpt["tokenizer"] == load_tokenizer(data).spec()
    capsys.readouterr()
    sample.main([f"--out_dir={out}", "--start=ROMEO:", "--max_new_tokens=8", "--num_samples=1", "--device=cpu"])
    assert capsys.readouterr().out.startswith("ROMEO:")
