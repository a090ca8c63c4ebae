import gzip
import hashlib
import json
import os

import numpy as np
import pytest

import prepare
import readers
from dataset import (BinWriter, DataError, check_bins, commit_shards, download, in_val_split, read_bin,
                     remove_stale_bins)
from readers import read_path
from tokenizer import load_tokenizer

from conftest import ROOT


def run_prepare(tmp_path, *args):
    prepare.main([*args, f"--data_root={tmp_path}"])
    return json.loads((tmp_path / _name(args) / "meta.json").read_text())


def _name(args):
    for a in args:
        if a.startswith("--name="):
            return a.split("=", 1)[1]
    return args[0]


def test_shakespeare_char_bins_and_meta(tmp_path):
    meta = run_prepare(tmp_path, "shakespeare_char")
    out = tmp_path / "shakespeare_char"
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(out / "val.bin", dtype=np.uint16, mode="r")
    text = open(os.path.join(ROOT, "data", "tinyshakespeare", "input.txt")).read()
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["kind"] == "char"
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    assert len(train) + len(val) == len(text) + 1  # every character, plus the end-of-text token
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 65 + 5
    assert tok.decode(train[:14]) == "First Citizen:"
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 1e-3  # one document: split by position
    assert val[-1] == tok.special_ids["<|endoftext|>"]


def test_shakespeare_gpt2_tokens(tmp_path):
    meta = run_prepare(tmp_path, "shakespeare")
    train = np.memmap(tmp_path / "shakespeare" / "train.bin", dtype=np.uint16, mode="r")
    assert meta["tokenizer"]["kind"] == "gpt2" and meta["vocab_size"] == 50261
    assert train[:3].tolist() == [5962, 22307, 25]  # "First Citizen:"


def test_a_prepared_dataset_lends_its_tokenizer(tmp_path):
    src = tmp_path / "more.txt"
    src.write_text("Thou art more lovely and more temperate.\n" * 3)
    run_prepare(tmp_path, "shakespeare", "--tokenizer=bpe", "--vocab_size=300")
    meta = run_prepare(tmp_path, f"--input={src}", "--name=more", "--tokenizer=shakespeare", "--curate=False")
    lender, tok = load_tokenizer(str(tmp_path / "shakespeare")), load_tokenizer(str(tmp_path / "more"))
    assert tok.spec() == lender.spec() and meta["vocab_size"] == 300  # the same BPE, not a new one
    train = np.fromfile(tmp_path / "more" / "train.bin", dtype=np.uint16)
    assert train[:8].tolist() == lender.encode(src.read_text())[:8]
    with pytest.raises(SystemExit, match="neither char, gpt2 or bpe nor a prepared dataset"):
        run_prepare(tmp_path, f"--input={src}", "--name=x", "--tokenizer=bpee")


def test_split_is_deterministic_and_by_document(tmp_path):
    docs = [{"text": f"document number {i} " * 3} for i in range(200)]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in docs))
    metas = [run_prepare(tmp_path, f"--input={src}", f"--name=run{k}", "--tokenizer=char", "--curate=False") for k in range(2)]
    for split in ("train", "val"):
        a, b = ((tmp_path / f"run{k}" / f"{split}.bin").read_bytes() for k in range(2))
        assert a == b
    expected_val = sum(in_val_split(i, 0.1, 1337) for i in range(200))
    assert metas[0]["val_docs"] == expected_val and metas[0]["train_docs"] == 200 - expected_val
    assert 5 <= expected_val <= 40


def test_jsonl_bad_lines_are_skipped_and_counted(tmp_path):
    src = tmp_path / "mixed.jsonl.gz"
    lines = ['{"text": "good one"}', "{not json", '{"title": "no text"}', '{"text": 5}', "", '{"text": "good two"}']
    with gzip.open(src, "wt") as f:
        f.write("\n".join(lines) + "\n")
    meta = run_prepare(tmp_path, f"--input={src}", "--name=mixed", "--curate=False")
    assert meta["train_docs"] + meta["val_docs"] == 2
    assert meta["input_stats"] == {"skipped_bad_json": 1, "skipped_no_text_field": 2}


def test_folder_invalid_utf8_and_binary_files(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha beta gamma\n" * 20)
    (folder / "b.txt").write_bytes(b"caf\xe9 latin-1 text\n" * 20)
    (folder / "c.bin").write_bytes(b"\x00\x01\x02binary")
    stats = {}
    from collections import Counter
    stats = Counter()
    docs = list(read_path(str(folder), stats))
    assert len(docs) == 2 and "caf\ufffd" in docs[1]
    assert stats == {"invalid_utf8_docs": 1, "invalid_utf8_chars": 20, "skipped_binary_files": 1}
    with pytest.raises(DataError, match="binary"):
        list(read_path(str(folder / "c.bin"), Counter()))


def test_huge_single_line_is_read_in_bounded_pieces(tmp_path):
    from collections import Counter
    src = tmp_path / "one_line.txt"
    src.write_text("x" * 5000)
    stats = Counter()
    docs = list(readers.read_text_file(str(src), stats, max_doc_bytes=1024))
    assert "".join(docs) == "x" * 5000 and max(map(len, docs)) <= 1024 and stats["large_file_pieces"] == len(docs)


def test_missing_and_empty_inputs_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        prepare.main([f"--input={tmp_path / 'nope.txt'}", f"--data_root={tmp_path}"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="no text|no documents"):
        prepare.main([f"--input={empty}", f"--data_root={tmp_path}"])
    with pytest.raises(SystemExit, match="unknown recipe"):
        prepare.main(["shakespear", f"--data_root={tmp_path}"])


def test_failed_write_keeps_previous_outputs(tmp_path, monkeypatch):
    run_prepare(tmp_path, "shakespeare_char")
    before = (tmp_path / "shakespeare_char" / "train.bin").read_bytes()

    def disk_full(self, split, ids):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare.BinWriter, "write", disk_full)
    with pytest.raises(OSError):
        run_prepare(tmp_path, "shakespeare_char")
    assert (tmp_path / "shakespeare_char" / "train.bin").read_bytes() == before
    assert not [p for p in os.listdir(tmp_path / "shakespeare_char") if ".tmp" in p]


def test_download_resumes_an_interrupted_transfer(tmp_path, file_server):
    body = os.urandom(300_000)
    server = file_server({"/data/corpus.txt": body}, drop_after=100_000)
    dest = tmp_path / "corpus.txt"
    download(server.url + "/data/corpus.txt", str(dest), sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert dest.read_bytes() == body
    path, resumed_from = server.requests[1]  # the second request continued where the first broke off
    assert path == "/data/corpus.txt" and 0 < int(resumed_from[6:-1]) <= 100_000
    assert not (tmp_path / "corpus.txt.part").exists()


def test_download_rejects_wrong_sha256_and_404(tmp_path, file_server):
    server = file_server({"/a.txt": b"hello"})
    with pytest.raises(DataError, match="sha256"):
        download(server.url + "/a.txt", str(tmp_path / "a.txt"), sha256="0" * 64, progress=False)
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "a.txt.part").exists()
    with pytest.raises(DataError, match="HTTP 404"):
        download(server.url + "/missing.txt", str(tmp_path / "m.txt"), progress=False)


def test_download_from_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "example.org" / "files"
    mirror.mkdir(parents=True)
    (mirror / "c.txt").write_bytes(b"offline copy")
    monkeypatch.setenv("NANOROOTS_MIRROR", str(tmp_path / "mirror"))
    dest = tmp_path / "got.txt"
    download("https://example.org/files/c.txt", str(dest), progress=False)
    assert dest.read_bytes() == b"offline copy"
    with pytest.raises(DataError, match="NANOROOTS_MIRROR"):
        download("https://example.org/files/other.txt", str(tmp_path / "o.txt"), progress=False)


def test_prepare_from_url(tmp_path, file_server):
    docs = "\n".join(json.dumps({"text": f"web page {i} says hello"}) for i in range(30)).encode()
    server = file_server({"/crawl.jsonl": docs})
    meta = run_prepare(tmp_path, f"--input={server.url}/crawl.jsonl", "--name=web", "--tokenizer=gpt2", "--curate=False")
    assert meta["train_docs"] + meta["val_docs"] == 30


def test_sharded_corpus_streams_shard_by_shard_up_to_max_tokens(tmp_path, file_server):
    shards = {}
    for k in range(4):
        lines = "\n".join(json.dumps({"text": f"shard {k} document {i}: " + "words and more words " * 20}) for i in range(50))
        shards[f"/c4/part-{k}.json.gz"] = gzip.compress(lines.encode())
    server = file_server(shards)
    urls = ",".join(f"{server.url}/c4/part-{k}.json.gz" for k in range(4))
    meta = run_prepare(tmp_path, f"--input={urls}", "--name=big", "--tokenizer=gpt2", "--curate=False",
                       "--max_tokens=12000", "--keep_downloads=False")
    fetched = [path for path, _ in server.requests]
    assert fetched == [f"/c4/part-{k}.json.gz" for k in range(3)]  # ~4,400 tokens a shard: the cap falls in the third
    assert 12000 <= meta["train_tokens"] + meta["val_tokens"] < 12000 + 500  # within a few documents of the cap
    assert not os.listdir(tmp_path / "big" / "downloads")  # each shard deleted once read


def test_c4_recipe_names_the_public_shards():
    urls = prepare.RECIPES["c4"]["input"]
    assert len(urls) == 1024 and urls[0].endswith("/en/c4-train.00000-of-01024.json.gz") and urls[0].startswith("https://")


# --- the shard format (dataset.py) -------------------------------------------------------------------------

def write_shards(data_dir, splits, vocab_size=70, run_id="r1"):
    """Shards as prepare.py's ranks write them: {split: [token lists, one per shard]} -> meta.json's counts."""
    os.makedirs(data_dir, exist_ok=True)
    listed = {"train": [], "val": []}
    for k in range(max(len(v) for v in splits.values())):
        writer = BinWriter(str(data_dir), vocab_size, shard=k, run_id=run_id)
        for split, pieces in splits.items():
            if k < len(pieces):
                writer.write(split, pieces[k])
                writer.docs[split] += 1
        for split, entry in writer.close().items():
            listed[split].append(entry)
    commit_shards(str(data_dir), listed, run_id)
    return {"dtype": "uint16", "run_id": run_id, "shards": listed,
            **{f"{s}_tokens": sum(e["tokens"] for e in listed[s]) for s in listed}}


def test_shards_read_as_one_stream_and_check_against_meta(tmp_path):
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 70, n).tolist() for n in (50, 0, 7, 1, 120)]  # an empty shard is not listed
    meta = write_shards(tmp_path, {"train": pieces, "val": [list(range(40))]})
    assert [e["file"] for e in meta["shards"]["train"]] == ["train-00000.bin", "train-00002.bin", "train-00003.bin",
                                                            "train-00004.bin"]
    stream, whole = read_bin(str(tmp_path), "train", meta), np.concatenate([np.array(p, dtype=np.int64) for p in pieces])
    assert len(stream) == len(whole) == meta["train_tokens"]
    for i, j in [(0, 178), (45, 60), (49, 58), (57, 58), (170, 178), (10, 10)]:  # across boundaries, inside, empty
        assert stream[i:j].tolist() == whole[i:j].tolist()
    assert stream[-1] == whole[-1] and np.array_equal(np.bincount(stream), np.bincount(whole))
    check_bins(str(tmp_path), meta, block_size=30)
    with pytest.raises(DataError, match="fewer than block_size"):
        check_bins(str(tmp_path), meta, block_size=60)  # val has 40 tokens
    (tmp_path / "train-00003.bin").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="train-00003.bin not found"):
        check_bins(str(tmp_path), meta)
    (tmp_path / "elsewhere").rename(tmp_path / "train-00003.bin")
    # another run's shard of the same length in its place: meta.json's fingerprint tells them apart
    (tmp_path / "train-00002.bin").write_bytes(np.arange(7, dtype=np.uint16).tobytes())
    with pytest.raises(DataError, match="train-00002.bin is not the file meta.json lists"):
        check_bins(str(tmp_path), meta)


def test_a_new_run_removes_the_bins_its_meta_does_not_list(tmp_path):
    run_prepare(tmp_path, "shakespeare_char", "--name=data")
    meta = write_shards(tmp_path / "data", {"train": [[1, 2, 3]] * 3, "val": [[4, 5, 6]]})
    (tmp_path / "data" / "train-00007.bin").write_bytes(b"\0\0")  # a shard of an earlier, longer corpus
    remove_stale_bins(str(tmp_path / "data"), meta)
    assert sorted(p.name for p in (tmp_path / "data").glob("*.bin")) == ["train-00000.bin", "train-00001.bin",
                                                                        "train-00002.bin", "val-00000.bin"]
