"""
The data stage: read documents, curate them the way BigScience built ROOTS (the training data of BLOOM),
tokenize them, and write data/<name>/{train,val}.bin + meta.json, with report.md explaining every removal.

    python prepare.py shakespeare_char                       # a built-in recipe (bundled clean text: no curation)
    python prepare.py --input=crawl.jsonl.gz --name=web --lang=en
    torchrun --standalone --nproc_per_node=4 prepare.py --input=crawl/ --name=web      # ranks share the work
    python prepare.py --input=notes.txt --name=notes --tokenizer=gpt2 --curate=False
    python prepare.py tang_poems --tokenizer=bpe --vocab_size=8192  # Tang poems, our own trained BPE

Inputs: a text file (one document), a folder of text/jsonl files, `.jsonl`/`.jsonl.gz` with a
`text` field (one document per line), a `.json` array of such records (or of chinese-poetry poems),
`.parquet` (the `text_field` column) and web archives (`.warc[.gz]`: HTML responses, WET text), or
http(s) URLs of any of those, downloaded with retries, resume and sha256 checks (set
NANOROOTS_MIRROR=<dir> to read local copies instead). Several inputs are separated by commas.
Documents are split into train/val deterministically by a stable hash of their index; a corpus that
is one document is split by position (the last `val_fraction`). A trained tokenizer (bpe) learns
from the train split only, so the validation loss is measured on text it has never seen.

Curation follows ROOTS (curate.py), every stage on unless switched off:
    read -> html (main text of web pages) -> clean -> lang (py3langid or fastText) -> quality filters
    (+ perplexity) -> exact dedup -> MinHash near-dedup -> PII redaction -> tokenize + write -> report.md /
    report.json / removed.jsonl.gz
Each input source is cut, in order, into shards of shard_mb MB. Under torchrun, given at least as many local
files as ranks (--input=a.jsonl.gz,b.jsonl.gz,...), each rank reads only its own files; otherwise every rank
reads the whole input and takes every world-th shard. Pass 1: every rank streams its shards through the
per-document stages, stages the survivors in data/<name>/.scratch/ and writes their dedup keys to disk. The
duplicates are decided from the keys alone, partitioned by key over the ranks (dedup.py): no text crosses
ranks, and no rank holds more than its share. The tokenizer is fitted once (a BPE on rank 0, from a sample
drawn across ranks). Pass 2: every rank tokenizes and writes its own shards
(train-00000.bin, val-00000.bin, ...); rank 0 renames them into place and writes meta.json last, listing them.
The shards depend on the input alone, so N ranks write byte-for-byte what one writes. A curated document's
index is its source's place in --input * 10**12 + its place in the source; its split (train or val) is
decided by that index. Memory stays flat: no stage holds the corpus.
Outputs are written to temporary names and renamed at the end, so an interrupted run leaves the previous
outputs intact. Without curation (--curate=False), one process writes train.bin and val.bin in one stream.
"""

import contextlib
import errno
import functools
import gzip
import heapq
import io
import itertools
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from types import SimpleNamespace

import numpy as np
import torch.distributed as dist
from tqdm import tqdm

from configurator import configure, script_main
from corpora import CRAWL_FILES, english_input, read_instructions
from curate import (DOC_BASE, SNIPPET, Tally, curate_shard, normalize_for_perplexity, peak_rss_mb,
                    perplexity_settings, remove_boilerplate, wanted_languages)
from dedup import (Cursor, all_gather, broadcast, decide_duplicates, document_owner, gather, init_distributed,
                   staged_records)
from readers import read_labelled_lines, read_lines, read_path
from report import build_report, write_report
from dataset import (DATA_ROOT, HERE, SHARED_DATA, BinWriter, DataError, commit_shards, concatenate, dataset_dir, download,
                     download_path, in_val_split, list_shards, remove_download, remove_stale_bins, stable_hash,
                     token_dtype, write_meta)
from tokenizer import EOT, build_tokenizer, load_tokenizer, tokenizer_from_spec

DEFAULTS = dict(
    # what to read
    recipe="",              # a built-in recipe (see RECIPES), or empty to use `input`
    input="",               # file, folder, .jsonl[.gz], or http(s) URL; several separated by commas
    text_field="text",      # the JSON field (or Parquet column) holding a document's text
    sha256="",              # expected sha256 of a single downloaded input (checked when given)
    max_doc_mb=64,          # a text file larger than this is read as several documents of this size
    # what to write
    name="",                # output folder data/<name>/
    data_root=DATA_ROOT,
    tokenizer="char",       # char | gpt2 | bpe (our own byte-level BPE, trained on the train split) | a prepared
                            # dataset (name under data_root, or path) whose tokenizer to reuse, e.g. to continue
                            # training a model on new text
    vocab_size=8192,        # bpe: tokens in all, the 5 special tokens included
    min_frequency=2,        # bpe: stop merging when the most frequent pair occurs fewer times
    tokenizer_train_bytes=20_000_000,  # bpe: train on a sample of this many bytes of the train split (0 = all of it)
    val_fraction=0.1,       # share of documents (or of the one document's tokens) kept for validation
    seed=1337,              # seeds the train/val split
    max_tokens=0,           # stop after writing this many tokens (0 = no cap; curated runs keep whole shards)
    keep_downloads=True,    # False: delete each downloaded shard once it is read (big corpora)
    # curation, ROOTS-style (see the README's "Data curation"); every stage is on unless switched off
    curate=True,            # False: read and tokenize only (the bundled recipes)
    lang="auto",            # auto (keep every identified language) | en | zh | en,fr ...; others removed as `lang`
    lang_id=True,           # identify each document's language; False: every document is taken to be `lang`
    lang_id_model="",       # a fastText language-ID model file (ROOTS': lid.176.bin); empty = py3langid (bundled)
    html=True,              # a document that is an HTML page is replaced by its main text (resiliparse)
    clean=True,             # ROOTS cleaning: strip, uniform spaces, drop URL-like and over-long words
    nfc=False,              # also normalise Unicode to NFC while cleaning (ROOTS did not)
    filters=True,           # ROOTS quality filters with their per-language thresholds
    char_rep_k="code",      # code: k = min(floor(sqrt(distinct)), repeated) as ROOTS ran | paper: floor(sqrt(distinct))
    short_circuit=True,     # stop at a document's first failed filter (ROOTS); False computes every value
    ppl_model="",           # nanoroots checkpoint(s) scoring perplexity: out-x (every language) or en:out-en,zh:out-zh
    ppl_max="",             # remove documents above this perplexity: 900, or en:900,zh:1200; empty/0 = only record it
    ppl_normalize=False,    # curate=False only: write the text normalised as perplexity scoring sees it, to train
                            # a scoring model on (README, "Perplexity")
    dedup=True,             # exact duplicates: same text without whitespace, digits, ASCII punctuation
    near_dedup=True,        # near-duplicates: MinHash LSH over word 5-grams (character 5-grams for zh)
    minhash_bands=14,       # LSH bands x rows = hashes per document; 14 x 8 flags Jaccard >= ~0.72 (datatrove)
    minhash_rows=8,
    template_lines=True,    # cut lines of 15+ characters seen 10+ times in the shard (ROOTS' dedup_template_soft)
    substring_dedup=True,   # cut spans of 50+ bytes repeated earlier in the shard (Lee et al. 2022, suffix array)
    pii=True,               # redact e-mails, IP addresses, @users and keys to PI:<KIND>
    pii_phone=False,        # also phone numbers (off: ROOTS disabled them for false positives)
    keep_text=False,        # also write clean.jsonl.gz with the kept documents
    # scale: curated output is written in shards, each rank writing its own; dedup keys are partitioned over ranks
    shard_mb=64.0,          # MB of input per shard (train-NNNNN.bin, val-NNNNN.bin): the unit of work a rank takes
    dedup_memory_mb=256.0,  # dedup keys a rank holds in memory; past it they spill to sorted runs on disk
)
# Built-in recipes: overrides applied to keys the user left at their defaults. A callable value is
# called with the config, after the keys before it are set.
SHAKESPEARE = os.path.join(HERE, "data", "tinyshakespeare", "input.txt")
# English C4 (Raffel et al. 2020, allenai/c4 on the Hugging Face hub): 1024 gzipped JSONL shards of
# ~356k documents (~150M GPT-2 tokens) each. C4 is already filtered and deduplicated, so the recipe
# only tokenizes, streaming shard by shard and deleting each one once read, up to 10B tokens: the
# budget llm.c used to reproduce GPT-2 124M (config/gpt2.py).
C4_SHARD = "https://huggingface.co/datasets/allenai/c4/resolve/main/en/c4-train.{:05d}-of-01024.json.gz"
# Tang poems (Complete Tang Poems, traditional script) from github.com/chinese-poetry/chinese-poetry
# (MIT; the poems are public domain), pinned to a commit and checked by sha256. The project's
# ../shared/data/chinese_poetry/ holds the same files; without it they are downloaded. The repo's
# 唐诗三百首.json is left out: it repeats poems of these files, which would leak val into train.
TANG_POEMS_DIR = os.path.join(SHARED_DATA, "chinese_poetry")
TANG_POEMS_URL = ("https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/"
                  "99ebbef7e1345c0985c44b9fd96a3f9e776f117b/%E5%85%A8%E5%94%90%E8%AF%97/")  # 全唐诗/
TANG_POEMS_SHA256 = {
    "poet.tang.0.json": "4f88f429938082523cdc72a1612bd7a7c3e3f7a33f8192c61ae51340efc3c92d",
    "poet.tang.1000.json": "6e703b8d8dcedbd6110f6d48d043665ca2131db2035a5bfcef5e59a19aeb6d75",
    "poet.tang.2000.json": "ec28efa7e2ae9cdbbba09f0ed186e32ccae47a325ad1e5816b7ad56071c1665a",
    "poet.tang.3000.json": "9e4ba2323752b6b9fbdba875cdbc6a26636fe0cabc85fd066370d4915952001f",
    "poet.tang.4000.json": "b8a7946c879b9658a6c667a4c55f776fae7e5e00a17789ab06b274c1429afc66",
    "poet.tang.5000.json": "a0306e6962cff01639ad9a00b042a201b8dec1f30fa5d768a7b112589887861e",
}


def tang_poems_input(cfg):
    """The six poem files: the shared copies when present, else their URLs (downloaded by read_sources)."""
    if os.path.isdir(TANG_POEMS_DIR):
        return [os.path.join(TANG_POEMS_DIR, f) for f in TANG_POEMS_SHA256]
    return [TANG_POEMS_URL + f for f in TANG_POEMS_SHA256]


def known_sha256(url):
    """The pinned sha256 of a file a recipe downloads, checked after download; None for other URLs."""
    return TANG_POEMS_SHA256.get(url[len(TANG_POEMS_URL):]) if url.startswith(TANG_POEMS_URL) else None


RECIPES = {
    "shakespeare_char": dict(input=SHAKESPEARE, tokenizer="char", name="shakespeare_char", curate=False),
    "shakespeare": dict(input=SHAKESPEARE, tokenizer="gpt2", name="shakespeare", curate=False),
    "c4": dict(input=[C4_SHARD.format(i) for i in range(1024)], tokenizer="gpt2", name="c4", curate=False,
               max_tokens=10_000_000_000, val_fraction=0.0005, keep_downloads=False),
    # data/tang_poems with chars, data/tang_poems_bpe (or _gpt2) with another tokenizer; clean already
    "tang_poems": dict(input=tang_poems_input, tokenizer="char", curate=False,
                       name=lambda cfg: "tang_poems" + ("" if cfg.tokenizer == "char" else f"_{cfg.tokenizer}")),
    # unlabelled text for pretraining before finetune.py's SST-2 classifier: the SST-2 train sentences
    # without their labels (in-domain, "task-adaptive pretraining", Gururangan et al. 2020) plus clean
    # English (C4 documents, Wikipedia articles one per line). SST-2 dev and test stay unseen. Clean
    # already, and ROOTS' filters would drop most one-line reviews, so it is not curated.
    "reviews": dict(input=[f"labelled:{SHARED_DATA}/sst2/stsa.binary.train",
                           f"{SHARED_DATA}/clean_text_sample/c4_demo.jsonl",
                           f"lines:{SHARED_DATA}/clean_text_sample/wiki_demo.txt"],
                    tokenizer="bpe", vocab_size=8192, name="reviews", curate=False),
    # the English documents of the raw web-crawl sample, curated ROOTS-style (language, filters, dedup, PII);
    # keep_text writes them to data/crawl_en/clean.jsonl.gz, which the `english` recipe reads
    "crawl_en": dict(input=CRAWL_FILES, lang="en", keep_text=True, tokenizer="gpt2", name="crawl_en"),
    # all the English training text in ../shared/data, for pretraining before finetune.py's SST-2, TREC and
    # Alpaca tasks: their training text without labels (task-adaptive pretraining, Gururangan et al. 2020),
    # C4, Wikipedia, Alpaca and the curated crawl. Dev and test text, and the Alpaca records that sft holds
    # out, stay unseen. Not curated: ROOTS' word-count filter would drop the one-line sentences.
    # Run `python prepare.py crawl_en` first.
    "english": dict(input=english_input, tokenizer="bpe", vocab_size=2048, name="english", curate=False),
}


# -----------------------------------------------------------------------------
# reading documents: each reader yields plain strings; `stats` counts what was skipped or repaired
# (the readers are in readers.py; read_sources below picks one per source and downloads URLs)

def read_sources(sources, stats, text_field="text", max_doc_bytes=64 << 20, download_dir=None, sha256=None,
                 keep_downloads=True):
    """
    Documents from every source in order. A URL is downloaded to `download_dir` just before it is
    read (so a corpus of many shards streams shard by shard) and, with keep_downloads=False,
    deleted once read. Under torchrun rank 0 downloads while the others wait at a barrier, then
    every rank reads the file (download_dir must be on a file system every rank sees).
    `lines:PATH` reads one document per line; `labelled:PATH` one per `<label> <text>` line, label dropped;
    `instructions:PATH` one per Alpaca record (read_instructions).
    """
    distributed = dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    for source in sources:
        if source.startswith("lines:"):
            yield from read_lines(source[len("lines:"):], stats)
            continue
        if source.startswith("labelled:"):
            yield from (text for _, text in read_labelled_lines(source[len("labelled:"):], stats))
            continue
        if source.startswith("instructions:"):
            yield from read_instructions(source[len("instructions:"):], stats)
            continue
        url = source.startswith(("http://", "https://"))
        if url:
            dest = download_path(source, download_dir or tempfile.gettempdir())
            if rank == 0:
                download(source, dest, sha256=sha256 or known_sha256(source))
            if distributed:
                dist.barrier()
            source = dest
        try:
            yield from read_path(source, stats, text_field, max_doc_bytes)
        finally:  # also when the reader stops early (max_tokens)
            if url and not keep_downloads:
                if distributed:
                    dist.barrier()  # every rank has finished reading it
                if rank == 0:
                    remove_download(source)


# -----------------------------------------------------------------------------
# tokenizing and writing the bins

def smallest_keys(entries, max_bytes):
    """Bottom-k sampling in one pass, holding only the sample: of (key, index, size, payload) entries, those with
    the smallest keys whose sizes fit in max_bytes together (at least one; 0 = all), in index order."""
    kept, size = [], 0  # a max-heap on the key: (-key, index, size, payload)
    for key, index, n, payload in entries:
        heapq.heappush(kept, (-key, index, n, payload))
        size += n
        while max_bytes and size > max_bytes and len(kept) > 1:
            size -= heapq.heappop(kept)[2]
    return sorted(((-key, index, n, payload) for key, index, n, payload in kept), key=lambda entry: entry[1])


def sample_key(seed, index):
    return stable_hash(seed, "tokenizer sample", index)


def utf8_size(text):
    return len(text.encode("utf-8", "surrogatepass"))


def train_split_texts(docs, val_fraction, seed, max_bytes=0):
    """
    The text write_dataset puts in train.bin, for fitting a tokenizer: the documents in_val_split
    leaves in train, or the first 1 - val_fraction of a corpus that is one document. With max_bytes,
    a deterministic sample spread over the corpus: the documents with the smallest hash keys, as many
    as fit in max_bytes (bottom-k sampling, one pass, holding only the sample). In corpus order.
    """
    docs = iter(docs)
    head = list(itertools.islice(docs, 2))
    if not head:
        raise DataError("the input has no documents; check the path, or the text_field of your .jsonl")
    if len(head) == 1:  # one document: write_dataset splits it by position
        return [train_part(head[0], val_fraction, max_bytes)]
    entries = ((sample_key(seed, index), index, utf8_size(text), text) for index, text in enumerate(itertools.chain(head, docs))
               if not in_val_split(index, val_fraction, seed))
    return [text for _, _, _, text in smallest_keys(entries, max_bytes)]


def train_part(text, val_fraction, max_bytes=0):
    """The part of a one-document corpus that goes to train (its first 1 - val_fraction), cut to max_bytes."""
    text = text[: len(text) - int(len(text) * val_fraction)]
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore") if max_bytes else text


def write_dataset(docs, tok, data_dir, val_fraction=0.1, seed=1337, max_tokens=0, batch_docs=256):
    """
    Tokenize `docs` (an iterable of strings) into data_dir/{train,val}.bin; each document ends with
    the end-of-text token. Returns the counts that go into meta.json.
    """
    os.makedirs(data_dir, exist_ok=True)
    writer = BinWriter(data_dir, tok.vocab_size)
    eot = tok.special_ids[EOT]
    first_doc, n_docs, last_train_len = None, 0, 0
    bar = tqdm(unit=" docs", desc="tokenizing", mininterval=2, disable=None)

    def flush(batch):
        nonlocal last_train_len
        for index, ids in zip((i for i, _ in batch), tok.encode_batch([t for _, t in batch])):
            ids.append(eot)
            split = "val" if in_val_split(index, val_fraction, seed) else "train"
            writer.write(split, ids)
            writer.docs[split] += 1
            if split == "train":
                last_train_len = len(ids)
        bar.update(len(batch))

    try:
        batch, pending_chars = [], 0
        for text in docs:
            n_docs += 1
            if n_docs == 1:  # held back: a corpus of one document is split by position instead
                first_doc = text
                continue
            if first_doc is not None:
                batch.append((0, first_doc))
                pending_chars += len(first_doc)
                first_doc = None
            batch.append((n_docs - 1, text))
            pending_chars += len(text)
            written = sum(writer.tokens.values())
            # a character is at most one token: near the cap, write early so no further shard is read
            if len(batch) >= batch_docs or (max_tokens and written + pending_chars >= max_tokens):
                flush(batch)
                batch, pending_chars = [], 0
                if max_tokens and sum(writer.tokens.values()) >= max_tokens:
                    break
        flush(batch)
        if first_doc is not None:
            ids = tok.encode_batch([first_doc])[0] + [eot]
            n_val = int(len(ids) * val_fraction)
            writer.write("train", ids[: len(ids) - n_val])
            writer.write("val", ids[len(ids) - n_val:])
            writer.docs.update(train=1, val=1)
        if n_docs == 0:
            raise DataError("the input has no documents; check the path, or the text_field of your .jsonl")
        if writer.tokens["val"] == 0 and val_fraction > 0 and writer.docs["train"] > 1:
            writer.move_last_doc_to_val(last_train_len)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return writer.counts()


def tokenizer_source(cfg):
    """The prepared dataset whose tokenizer `--tokenizer=` names (a folder under data_root, or a path),
    or None when it names a kind to build."""
    if cfg.tokenizer in ("char", "gpt2", "bpe"):
        return None
    path = dataset_dir(cfg.tokenizer, cfg.data_root)
    if not os.path.exists(os.path.join(path, "meta.json")):
        raise DataError(f"tokenizer={cfg.tokenizer!r} is neither char, gpt2 or bpe nor a prepared dataset "
                        f"({path}/meta.json does not exist)")
    return path


def fit_tokenizer(cfg, texts):
    """The tokenizer the corpus is written with, fitted on the kept documents (`texts()` gives a fresh
    iterator over them): char takes its vocabulary from all of them; a BPE trains on the train split
    only (sampled to tokenizer_train_bytes), so validation text stays unseen; GPT-2's vocabulary is fixed;
    a prepared dataset lends its own."""
    source = tokenizer_source(cfg)
    if source:
        return load_tokenizer(source)
    if cfg.tokenizer == "bpe":
        return build_tokenizer("bpe", train_split_texts(texts(), cfg.val_fraction, cfg.seed, cfg.tokenizer_train_bytes),
                               vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)
    if cfg.tokenizer == "char":
        chars = set()
        for text in texts():
            chars.update(text)
        if not chars:
            raise DataError("the input has no text; check the path, or the text_field of your .jsonl")
        return build_tokenizer("char", "".join(sorted(chars)))
    return build_tokenizer(cfg.tokenizer)


# -----------------------------------------------------------------------------
# a curated corpus across ranks. Pass 1 (curate.curate_shard): every rank curates its shards and stages the
# survivors. Then the duplicates are decided from keys partitioned over the ranks (dedup.py), the tokenizer is
# fitted once, and in pass 2 every rank writes its own shards; rank 0 renames them into place, writes meta.json
# last, and the report. Shards are cut by input position, so N ranks write byte-for-byte what one writes.

def split_plan(cfg, staged, drops):
    """How the kept documents are split, agreed by every rank: by in_val_split of their index; a corpus that
    keeps one document splits it by position; when no kept document falls in val, the last one moves there
    (write_dataset's rules, taken over the whole corpus)."""
    kept = np.setdiff1d(np.array(staged, dtype=np.int64), drops["doc"])
    n_val = sum(in_val_split(i, cfg.val_fraction, cfg.seed) for i in kept.tolist())
    ranks = all_gather((len(kept), n_val, int(kept[-1]) if len(kept) else -1))
    total, val = sum(r[0] for r in ranks), sum(r[1] for r in ranks)
    return SimpleNamespace(kept=total, one_doc=total == 1, val_fraction=cfg.val_fraction, seed=cfg.seed,
                           to_val=max(r[2] for r in ranks) if val == 0 and cfg.val_fraction > 0 and total > 1 else None)


def fit_tokenizer_on_ranks(cfg, kept_texts, plan, rank):
    """fit_tokenizer over every rank's kept documents (`kept_texts()`: a fresh iterator of this rank's (index,
    text)), fitted once: char takes the union of every rank's characters; bpe trains on rank 0 on the very sample
    one process takes (the train documents with the smallest hash keys, see train_split_texts), whose texts come
    from their ranks (at most tokenizer_train_bytes in all), and every rank builds it from rank 0's merges."""
    source = tokenizer_source(cfg)
    if source:
        return load_tokenizer(source)
    if cfg.tokenizer == "char":
        chars = set()
        for _, text in kept_texts():
            chars.update(text)
        return build_tokenizer("char", "".join(sorted(set().union(*all_gather(chars)))))
    if cfg.tokenizer != "bpe":
        return build_tokenizer(cfg.tokenizer)
    max_bytes = cfg.tokenizer_train_bytes
    if plan.one_doc:
        entries = ((0, i, 0, train_part(text, cfg.val_fraction, max_bytes)) for i, text in kept_texts())
    else:
        entries = ((sample_key(cfg.seed, i), i, utf8_size(text), text) for i, text in kept_texts()
                   if not in_val_split(i, cfg.val_fraction, cfg.seed) and i != plan.to_val)
    mine = smallest_keys(entries, max_bytes)  # this rank's part of the sample is among its own smallest keys
    everyone = gather([(key, i, n, None) for key, i, n, _ in mine])
    chosen = set(broadcast([i for _, i, _, _ in smallest_keys(sum(everyone, []), max_bytes)] if rank == 0 else None))
    texts = gather([(i, text) for _, i, _, text in mine if i in chosen])
    spec = None
    if rank == 0:
        spec = build_tokenizer("bpe", [text for _, text in sorted(sum(texts, []))], vocab_size=cfg.vocab_size,
                               min_frequency=cfg.min_frequency).spec()
    return tokenizer_from_spec(broadcast(spec))


def write_tokens(writer, tok, batch, plan):
    """Tokenize a batch of kept (index, text) and append each document, ended by <|endoftext|>, to its split."""
    for (index, _), ids in zip(batch, tok.encode_batch([text for _, text in batch])):
        ids.append(tok.special_ids[EOT])
        if plan.one_doc:
            n_val = int(len(ids) * plan.val_fraction)
            writer.write("train", ids[: len(ids) - n_val])
            writer.write("val", ids[len(ids) - n_val:])
            writer.docs.update(train=1, val=1)
            continue
        split = "val" if index == plan.to_val or in_val_split(index, plan.val_fraction, plan.seed) else "train"
        writer.write(split, ids)
        writer.docs[split] += 1


@contextlib.contextmanager
def gzip_member(path):
    """A gzip file without name or time, so the same lines give the same bytes: the shards' parts of
    removed.jsonl.gz and clean.jsonl.gz, concatenated later (a gzip file may hold several members)."""
    with open(path, "wb") as raw, gzip.GzipFile("", "wb", compresslevel=6, fileobj=raw, mtime=0) as packed:
        with io.TextIOWrapper(packed, encoding="utf-8") as text:
            yield text


def write_shards(cfg, tok, shard, drops, plan, shown, data_dir, scratch, run_id, rank, world, cpu_start, batch_docs=256):
    """
    Pass 2 on every rank, shard by shard: the staged survivors of pass 1 less the duplicates are tallied
    (Tally.count_staged) and tokenized into train-NNNNN.bin / val-NNNNN.bin under temporary names, and every
    removal of the shard goes to its part of removed.jsonl.gz (the kept text to clean.jsonl.gz with keep_text).
    `shown`: documents whose text opens a cluster in the report. Returns {(source, k): {split: entry}}; the
    tally gets this rank's peak memory and its CPU seconds since `cpu_start`.
    """
    tally, written = shard.tally, {}
    clock = time.perf_counter()
    with open(shard.removed_path, encoding="utf-8") as removed_in:
        staged = Cursor(staged_records(shard.staged_path, drops), lambda item: item[0]["i"])
        removals = Cursor(map(json.loads, removed_in), lambda record: record["doc"])
        for i, (u, k, _, owner) in enumerate(shard.shards):
            if owner != rank:
                continue
            following = shard.shards[i + 1] if i + 1 < len(shard.shards) else None
            end = following[2] if following and following[0] == u else (u + 1) * DOC_BASE
            label = f"{u:05d}-{k:05d}"  # renumbered in input order when rank 0 commits
            writer = BinWriter(data_dir, tok.vocab_size, shard=label, run_id=run_id) if tok else None  # None: nothing kept
            dups, kept, batch, size = [], [], [], 0
            try:
                with contextlib.ExitStack() as files:
                    clean = cfg.keep_text and files.enter_context(gzip_member(os.path.join(scratch, f"clean-{label}.jsonl.gz")))
                    for record, duplicate in staged.upto(end):
                        if record["i"] in shown:
                            tally.cluster_text[record["i"]] = record["text"][:SNIPPET]
                        if tally.count_staged(record, duplicate):
                            kept.append(record)
                        else:
                            dups.append({"doc": record["i"], "reason": duplicate[0], "values": {"duplicate_of": duplicate[1]},
                                         **({"meta": record["meta"]} if record.get("meta") else {})})
                    clock = tally.lap("tokenize", clock)  # pass 2 but the boilerplate stages, which time themselves
                    kept, emptied = remove_boilerplate(kept, cfg, tally)
                    clock = time.perf_counter()
                    dups = sorted(dups + emptied, key=lambda r: r["doc"])
                    for record in kept:
                        if clean:
                            clean.write(json.dumps({"doc": record["i"], "lang": record["lang"], "text": record["text"],
                                                    **({"meta": record["meta"]} if record.get("meta") else {})},
                                                   ensure_ascii=False, default=str) + "\n")
                        batch.append((record["i"], record["text"]))
                        size += len(record["text"].encode("utf-8"))
                        if len(batch) >= batch_docs:
                            write_tokens(writer, tok, batch, plan)
                            batch = []
                    if batch:
                        write_tokens(writer, tok, batch, plan)
                    with gzip_member(os.path.join(scratch, f"removed-{label}.jsonl.gz")) as out:
                        for record in heapq.merge(removals.upto(end), dups, key=lambda r: r["doc"]):
                            out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            except BaseException:
                if writer:
                    writer.abort()
                raise
            written[u, k] = writer.close() if writer else {}
            clock = tally.lap("tokenize", clock, size)
    tally.peak_rss_mb[rank] = peak_rss_mb()
    tally.cpu_seconds[rank] = round(time.process_time() - cpu_start, 2)
    return written


def commit_corpus(cfg, data_dir, scratch, source, world, by_source, everyone, clusters, tok, run_id, started):
    """Rank 0, once every rank has written: rename the shards into place, then meta.json; removed.jsonl.gz (and
    clean.jsonl.gz) from the shards' parts, in shard order; the report. Returns the meta.json dict."""
    tally = functools.reduce(Tally.add, (t for t, _, _ in everyone), Tally())
    written = {k: entries for _, shards, _ in everyone for k, entries in shards.items()}
    # ranks that read their own sources counted their own input stats; ranks that read everything, the same
    stats = sum((s for _, _, s in everyone), Counter()) if by_source else everyone[0][2]
    counts, meta = {}, None
    if tally.docs["kept"]:
        shards = list_shards(written, cfg.max_tokens, data_dir, run_id)
        commit_shards(data_dir, shards, run_id)
        counts = {"dtype": token_dtype(tok.vocab_size).name, "run_id": run_id,
                  **{f"{split}_{what}": sum(e[what] for e in shards[split]) for split in ("train", "val") for what in ("tokens", "docs")}}
        meta = write_meta(data_dir, tok, counts | {"shards": shards}, source, stats)
        remove_stale_bins(data_dir, meta)
        counts["shards"] = len(shards["train"])
    labels = [f"{u:05d}-{k:05d}" for u, k in sorted(written)]
    concatenate([os.path.join(scratch, f"removed-{label}.jsonl.gz") for label in labels], os.path.join(data_dir, "removed.jsonl.gz"))
    if cfg.keep_text:
        concatenate([os.path.join(scratch, f"clean-{label}.jsonl.gz") for label in labels], os.path.join(data_dir, "clean.jsonl.gz"))
    write_report(data_dir, build_report(cfg, data_dir, source, world, tally, clusters, tally.cluster_text, counts, stats,
                                        time.time() - started))
    if not tally.docs["read"]:
        raise DataError("the input has no documents; check the path, or the text_field of your .jsonl")
    if not tally.docs["kept"]:
        raise DataError(f"no document survived curation ({tally.docs['read']} read): see {os.path.join(data_dir, 'report.md')} "
                        f"for the reasons, then loosen --lang or switch a stage off")
    return meta


# -----------------------------------------------------------------------------

def check_config(cfg):
    """Settings that cannot work, as one-line errors before any reading."""
    if cfg.char_rep_k not in ("code", "paper"):
        raise DataError(f"char_rep_k={cfg.char_rep_k!r}: use code (ROOTS' code) or paper (the paper's App. C)")
    if cfg.minhash_bands < 1 or cfg.minhash_rows < 1:
        raise DataError(f"minhash_bands={cfg.minhash_bands}, minhash_rows={cfg.minhash_rows}: both must be >= 1 (default 14 x 8)")
    if cfg.shard_mb <= 0 or cfg.dedup_memory_mb <= 0:
        raise DataError(f"shard_mb={cfg.shard_mb}, dedup_memory_mb={cfg.dedup_memory_mb}: both must be > 0 (default 64 and 256)")
    if not 0 <= cfg.val_fraction < 1:
        raise DataError(f"val_fraction={cfg.val_fraction} must be at least 0 and below 1 (default 0.1)")
    perplexity_settings(cfg)
    if cfg.ppl_normalize and cfg.curate:
        raise DataError("ppl_normalize=True writes text for training a perplexity model: use it with --curate=False")
    if cfg.curate:
        wanted_languages(cfg.lang, cfg.lang_id, cfg.lang_id_model)
    tokenizer_source(cfg)


def prepare(cfg):
    """Run the data stage for a config namespace; returns the meta.json dict (None on ranks other than 0)."""
    if cfg.recipe:
        if cfg.recipe not in RECIPES:
            raise DataError(f"unknown recipe {cfg.recipe!r}; built-in recipes: {', '.join(RECIPES)}")
        for key, value in RECIPES[cfg.recipe].items():
            if getattr(cfg, key) == DEFAULTS[key]:
                setattr(cfg, key, value(cfg) if callable(value) else value)
    sources = cfg.input if isinstance(cfg.input, list) else [s for s in cfg.input.split(",") if s]
    if not sources:
        raise DataError("nothing to read: give a recipe (e.g. `python prepare.py shakespeare_char`) or --input=PATH_OR_URL")
    check_config(cfg)
    name = cfg.name or os.path.splitext(os.path.basename(sources[0].rstrip("/")))[0].split(".")[0]
    if name in ("", ".", "..") or os.path.basename(name) != name:  # outputs stay under data_root
        raise DataError(f"name={name!r} must be a plain folder name: the outputs go to {cfg.data_root}/<name>/")
    data_dir = os.path.join(cfg.data_root, name)
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {data_dir} ({e.strerror}); choose another --data_root") from None
    started = time.time()
    if not cfg.curate:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DataError("curate=False streams the corpus in one process (nothing to split); run it without torchrun")
        meta = write_uncurated(cfg, sources, data_dir)
    else:
        meta = curate_and_write(cfg, sources, data_dir, started)
        if meta is None:  # ranks other than 0
            return None
    print(f"wrote {data_dir}: {meta['train_tokens']:,} train tokens ({meta['train_docs']} docs), "
          f"{meta['val_tokens']:,} val tokens ({meta['val_docs']} docs), {meta['tokenizer']['kind']} vocab "
          f"{meta['vocab_size']}, {time.time() - started:.1f}s" + (f"; input: {meta['input_stats']}" if meta['input_stats'] else "")
          + (f"; report: {os.path.join(data_dir, 'report.md')}" if cfg.curate else ""))
    return meta


def write_uncurated(cfg, sources, data_dir):
    """Without curation no decision depends on other documents: read, tokenize and write in one
    stream, shard by shard, until max_tokens. A learned vocabulary takes a first pass over the
    corpus, which keeps its downloads for the second."""
    stats = Counter()

    def documents(counts, keep):
        docs = read_sources(sources, counts, cfg.text_field, cfg.max_doc_mb << 20, os.path.join(data_dir, "downloads"),
                            cfg.sha256, keep)
        return map(normalize_for_perplexity, docs) if cfg.ppl_normalize else docs

    tok = fit_tokenizer(cfg, lambda: documents(Counter(), True))
    counts = write_dataset(documents(stats, cfg.keep_downloads), tok, data_dir, cfg.val_fraction, cfg.seed, cfg.max_tokens)
    meta = write_meta(data_dir, tok, counts, ",".join(sources), stats)
    remove_stale_bins(data_dir, meta)  # the shards of an earlier curated run
    return meta


@contextlib.contextmanager
def disk_full_is_a_data_error(data_dir):
    try:
        yield
    except OSError as e:  # staging, keys, spilled runs and shards can fill the disk
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        raise DataError(f"could not write in {data_dir} ({e.strerror}); free some disk space and rerun: "
                        f"the previous outputs are untouched") from None


def curate_and_write(cfg, sources, data_dir, started):
    """Pass 1 on every rank over its shards, the duplicates decided across ranks, the tokenizer fitted once, pass
    2 on every rank writing its shards, then rank 0 commits them (see the section's comment). Returns the
    meta.json dict on rank 0, None elsewhere."""
    rank, world = init_distributed()
    run_id, gathered, committed, cpu_start = broadcast(uuid.uuid4().hex[:12]), False, False, time.process_time()
    scratch = os.path.join(data_dir, ".scratch")  # every rank's working files, on the shared output folder
    os.makedirs(scratch, exist_ok=True)
    try:
        stats = Counter()
        by_source = world > 1 and len(sources) >= world and not any(s.startswith(("http://", "https://")) for s in sources)
        documents = ((u, read_sources([source], stats, cfg.text_field, cfg.max_doc_mb << 20, os.path.join(data_dir, "downloads"),
                                      cfg.sha256, cfg.keep_downloads) if not by_source or u % world == rank else None)
                     for u, source in enumerate(sources))
        with disk_full_is_a_data_error(data_dir):
            shard = curate_shard(documents, rank, world, by_source, cfg, scratch)
            clock = time.perf_counter()
            owner = document_owner(shard.shards, world, by_source)
            drops, clusters = decide_duplicates(shard.exact_path, shard.near_path, owner, rank, world, cfg.dedup_memory_mb, scratch)
            plan = split_plan(cfg, shard.staged, drops)
            shown = set(broadcast([cluster[0] for cluster in clusters[1]] if rank == 0 else None))
            clock = shard.tally.lap("dedup_decision", clock)
            tok = None
            if plan.kept:
                kept = lambda: ((r["i"], r["text"]) for r, dup in staged_records(shard.staged_path, drops) if not dup)  # noqa: E731
                tok = fit_tokenizer_on_ranks(cfg, kept, plan, rank)
                shard.tally.lap("tokenize", clock)
            written = write_shards(cfg, tok, shard, drops, plan, shown, data_dir, scratch, run_id, rank, world, cpu_start)
        remove_working_files(scratch, rank)  # before the gather: afterwards only rank 0 touches the folder
        everyone = gather((shard.tally, written, stats))  # tallies and shard lists: no text
        gathered, committed = True, rank != 0  # every rank is done with the working folder
        if rank != 0:
            return None
        meta = commit_corpus(cfg, data_dir, scratch, ",".join(sources), world, by_source, everyone, clusters, tok, run_id, started)
        committed = True
        return meta
    finally:
        if not gathered:  # after the gather rank 0 removes the whole folder
            remove_working_files(scratch, rank)
        if not committed:  # a failed run leaves no temporary shards behind
            for name in os.listdir(data_dir):
                if name.endswith(f".tmp{run_id}"):
                    with contextlib.suppress(FileNotFoundError):  # another failing rank removed it first
                        os.remove(os.path.join(data_dir, name))
        if rank == 0 and gathered:
            shutil.rmtree(scratch)
        if dist.is_initialized():
            dist.destroy_process_group()


def remove_working_files(scratch, rank):
    """This rank's files from pass 1 and the dedup exchange."""
    for name in os.listdir(scratch):
        if re.fullmatch(rf"(staged|removed|exact|near)-{rank}\.(jsonl|bin)|run-{rank}-.*", name):
            os.remove(os.path.join(scratch, name))


def prepare_recipe(name):
    """Prepare the built-in recipe `name` into data/<name>/ (train.py and finetune.py call this for a dataset
    that is missing). Returns the meta.json dict."""
    return prepare(configure(DEFAULTS, [name], positional="recipe", verbose=False))


@script_main
def main(argv=None):
    prepare(configure(DEFAULTS, argv, positional="recipe"))


if __name__ == "__main__":
    main()
