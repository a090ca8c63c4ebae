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
or http(s) URLs of any of those, downloaded with retries, resume and sha256 checks (set
NANOROOTS_MIRROR=<dir> to read local copies instead). Several inputs are separated by commas.
Documents are split into train/val deterministically by a stable hash of their index; a corpus that
is one document is split by position (the last `val_fraction`). A trained tokenizer (bpe) learns
from the train split only, so the validation loss is measured on text it has never seen.

Curation (Laurençon et al. 2022, "The BigScience ROOTS Corpus", §3 and App. C-D; thresholds and word lists from
BigScience's code, in data/roots/), every stage on unless switched off:
    read -> lang (script + closed-class words) -> clean -> quality filters -> exact dedup -> MinHash
    near-dedup -> PII redaction -> tokenize + write -> report.md / report.json / removed.jsonl.gz
Pass 1 streams each rank's share of the documents (index % world == rank) through the per-document stages
and stages the survivors in data/<name>/. The ranks send their dedup hashes (never text) to rank 0, which
decides duplicates for the whole corpus, reads the staged documents back in input order, fits the
tokenizer and writes the bins: N ranks write byte-for-byte what one writes. Memory stays flat except for
the dedup index (~130 bytes per document). Outputs are written to temporary names and renamed at the end,
so an interrupted run leaves the previous outputs intact.
"""

import array
import codecs
import contextlib
import errno
import functools
import gzip
import hashlib
import heapq
import io
import ipaddress
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from types import SimpleNamespace

import numpy as np
import requests
from tqdm import tqdm

from configurator import configure
from tokenizer import EOT, TokenizerError, build_tokenizer, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = dict(
    # what to read
    recipe="",              # a built-in recipe (see RECIPES), or empty to use `input`
    input="",               # file, folder, .jsonl[.gz], or http(s) URL; several separated by commas
    text_field="text",      # the JSON field holding a document's text
    sha256="",              # expected sha256 of a single downloaded input (checked when given)
    max_doc_mb=64,          # a text file larger than this is read as several documents of this size
    # what to write
    name="",                # output folder data/<name>/
    data_root=os.path.join(HERE, "data"),
    tokenizer="char",       # char | gpt2 | bpe (our own byte-level BPE, trained on the train split) | a prepared
                            # dataset (name under data_root, or path) whose tokenizer to reuse, e.g. to continue
                            # training a model on new text
    vocab_size=8192,        # bpe: tokens in all, the 5 special tokens included
    min_frequency=2,        # bpe: stop merging when the most frequent pair occurs fewer times
    tokenizer_train_bytes=20_000_000,  # bpe: train on a sample of this many bytes of the train split (0 = all of it)
    val_fraction=0.1,       # share of documents (or of the one document's tokens) kept for validation
    seed=1337,              # seeds the train/val split
    max_tokens=0,           # stop after writing this many tokens (0 = no cap)
    keep_downloads=True,    # False: delete each downloaded shard once it is read (big corpora)
    # curation, ROOTS-style (see the README's "Data curation"); every stage is on unless switched off
    curate=True,            # False: read and tokenize only (the bundled recipes)
    lang="auto",            # auto (keep every identified language) | en | zh | en,fr ...; others removed as `lang`
    lang_id=True,           # identify each document's language; False: every document is taken to be `lang`
    clean=True,             # ROOTS cleaning: strip, uniform spaces, drop URL-like and over-long words
    nfc=False,              # also normalise Unicode to NFC while cleaning (ROOTS did not)
    filters=True,           # ROOTS quality filters with their per-language thresholds
    char_rep_k="code",      # code: k = min(floor(sqrt(distinct)), repeated) as ROOTS ran | paper: floor(sqrt(distinct))
    short_circuit=True,     # stop at a document's first failed filter (ROOTS); False computes every value
    ppl_model="",           # a nanoroots checkpoint (out dir or .pt) scoring perplexity; empty = no perplexity
    ppl_max=0.0,            # remove documents above this perplexity; 0 = only record it (see the histogram)
    dedup=True,             # exact duplicates: same text without whitespace, digits, ASCII punctuation
    near_dedup=True,        # near-duplicates: MinHash LSH over word 5-grams (character 5-grams for zh)
    minhash_bands=14,       # LSH bands x rows = hashes per document; 14 x 8 flags Jaccard >= ~0.72 (datatrove)
    minhash_rows=8,
    pii=True,               # redact e-mails, IP addresses, @users and keys to PI:<KIND>
    pii_phone=False,        # also phone numbers (off: ROOTS disabled them for false positives)
    keep_text=False,        # also write clean.jsonl.gz with the kept documents
)
CURATION_KEYS = ("curate", "lang", "lang_id", "clean", "nfc", "filters", "char_rep_k", "short_circuit", "ppl_model",
                 "ppl_max", "dedup", "near_dedup", "minhash_bands", "minhash_rows", "pii", "pii_phone", "keep_text")

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
SHARED_DATA = os.path.join(os.path.dirname(HERE), "shared", "data")  # the project's public data, next to the checkout
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
}


class DataError(ValueError):
    """Input that cannot be used; the message says what to do."""


# -----------------------------------------------------------------------------
# crash-safe writes: write a temporary file next to the target, then rename over it

def atomic_write_text(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def stable_hash(*parts):
    """A 64-bit hash that is the same in every process and run (Python's hash() is salted)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# -----------------------------------------------------------------------------
# downloads

def _mirror_copy(url):
    """A local copy of `url` under $NANOROOTS_MIRROR: <mirror>/<host>/<path> or <mirror>/<file name>."""
    mirror = os.environ.get("NANOROOTS_MIRROR")
    if not mirror:
        return None
    host_path = url.split("://", 1)[-1].split("?", 1)[0]
    for candidate in (os.path.join(mirror, host_path), os.path.join(mirror, os.path.basename(host_path))):
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"NANOROOTS_MIRROR={mirror} has no copy of {url}; "
                    f"put it at {os.path.join(mirror, host_path)} or unset NANOROOTS_MIRROR")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url, dest, sha256=None, retries=4, timeout=30, progress=True):
    """
    Fetch `url` to `dest`: stream into dest.part, resume it with an HTTP Range request after a
    dropped connection, retry with backoff, check sha256 when known, then rename. Returns dest.
    """
    if os.path.exists(dest) and (not sha256 or sha256_of(dest) == sha256):
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    mirrored = _mirror_copy(url)
    if mirrored:
        with open(mirrored, "rb") as src, open(part, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
    else:
        for attempt in range(retries + 1):
            have = os.path.getsize(part) if os.path.exists(part) else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
                    if r.status_code == 416:  # nothing left to fetch: the .part is complete
                        break
                    if r.status_code in (404, 403, 401, 410):
                        raise DataError(f"HTTP {r.status_code} for {url}: check the URL, or set NANOROOTS_MIRROR to a local copy")
                    r.raise_for_status()
                    resumed = r.status_code == 206
                    total = int(r.headers.get("Content-Length", 0)) + (have if resumed else 0)
                    with open(part, "ab" if resumed else "wb") as f, tqdm(
                            total=total or None, initial=have if resumed else 0, unit="B", unit_scale=True,
                            desc=os.path.basename(dest), disable=not progress, leave=False) as bar:
                        for block in r.iter_content(1 << 16):
                            f.write(block)
                            bar.update(len(block))
                    if total and os.path.getsize(part) < total:
                        raise requests.ConnectionError(f"connection closed at {os.path.getsize(part)} of {total} bytes")
                break
            except requests.RequestException as e:  # dropped connections, timeouts, 5xx
                if attempt == retries:
                    raise DataError(f"could not download {url} after {retries + 1} tries ({e}); "
                                    f"retry later, or set NANOROOTS_MIRROR to a local copy") from None
                wait = min(2 ** attempt, 30)
                print(f"download of {url} failed ({e}); retrying in {wait}s", file=sys.stderr)
                time.sleep(wait)
    if sha256:
        got = sha256_of(part)
        if got != sha256:
            os.remove(part)
            raise DataError(f"sha256 of {url} is {got}, expected {sha256}: the file is corrupt or changed; deleted it")
    os.replace(part, dest)
    return dest


# -----------------------------------------------------------------------------
# reading documents: each reader yields plain strings; `stats` counts what was skipped or repaired

def _decode(raw, stats):
    """UTF-8 with invalid bytes replaced by U+FFFD, and counted."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats["invalid_utf8_docs"] += 1
        stats["invalid_utf8_chars"] += text.count("\ufffd") - raw.count("\ufffd".encode())
        return text


SURROGATES = re.compile("[\ud800-\udfff]")


def _looks_binary(path):
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def read_text_file(path, stats, max_doc_bytes):
    """A text file is one document; a file over max_doc_bytes becomes several, cut at line ends."""
    if _looks_binary(path):
        raise DataError(f"{path} looks like a binary file (it has NUL bytes); give a text or .jsonl file")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    invalid, pieces, carry = 0, 0, ""
    with open(path, "rb") as f:
        block = f.read(max_doc_bytes)
        while True:
            after = f.read(max_doc_bytes) if block else b""
            decoded = decoder.decode(block, final=not after)
            invalid += decoded.count("\ufffd") - block.count("\ufffd".encode())
            text = carry + decoded
            if not after:
                break
            cut = text.rfind("\n") + 1 or len(text)  # a single huge line is cut where the block ends
            carry, pieces = text[cut:], pieces + 1
            yield text[:cut]
            block = after
    if text:
        pieces += 1
        yield text
    if pieces > 1:
        stats["large_file_pieces"] += pieces
    if invalid:
        stats["invalid_utf8_docs"] += 1
        stats["invalid_utf8_chars"] += invalid


def read_jsonl(path, stats, text_field, max_doc_bytes):
    """One document per line; bad JSON, a missing field and over-long lines are skipped and counted."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line in iter(lambda: f.readline(max_doc_bytes + 1), b""):
            if len(line) > max_doc_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # skip the rest without holding it
                    line = f.readline(max_doc_bytes)
                stats["skipped_too_long"] += 1
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(_decode(line, stats))
            except json.JSONDecodeError:
                stats["skipped_bad_json"] += 1
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                stats["skipped_no_text_field"] += 1
                continue
            if SURROGATES.search(text):  # JSON can hold lone surrogates, which UTF-8 cannot: replaced, counted
                text, n = SURROGATES.subn("\ufffd", text)
                stats["lone_surrogates"] += n
            yield text


def poem_text(record):
    """A chinese-poetry record as a readable document: its title, author, then one couplet per line."""
    return "\n".join([record.get("title", ""), record.get("author", ""), *record["paragraphs"]])


def read_json_array(path, stats, text_field, max_doc_bytes):
    """A .json file holding an array of records: each record's `text_field` (or a poem) is a document."""
    if os.path.getsize(path) > max_doc_bytes:
        raise DataError(f"{path} is over max_doc_mb as one JSON array; convert it to .jsonl (one record per line)")
    with open(path, "rb") as f:
        try:
            records = json.loads(_decode(f.read(), stats))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); give a JSON array of records, or .jsonl") from None
    if not isinstance(records, list):
        raise DataError(f"{path} holds a JSON {type(records).__name__}, not an array of records; give .jsonl or a JSON array")
    for record in records:
        if isinstance(record, dict) and isinstance(record.get(text_field), str):
            text = record[text_field]
        elif isinstance(record, dict) and isinstance(record.get("paragraphs"), list):
            text = poem_text(record)
        else:
            stats["skipped_no_text_field"] += 1
            continue
        if SURROGATES.search(text):  # as in read_jsonl: lone surrogates cannot be UTF-8; replaced, counted
            text, n = SURROGATES.subn("\ufffd", text)
            stats["lone_surrogates"] += n
        yield text


def _is_jsonl(path):
    return path.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson"))


def read_path(path, stats, text_field="text", max_doc_bytes=64 << 20):
    if os.path.isdir(path):
        files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
        if not files:
            raise DataError(f"folder {path} has no files")
        for file in files:
            if not _is_jsonl(file) and _looks_binary(file):
                stats["skipped_binary_files"] += 1
                continue
            yield from read_path(file, stats, text_field, max_doc_bytes)
    elif not os.path.exists(path):
        raise DataError(f"input {path} does not exist")
    elif _is_jsonl(path):
        yield from read_jsonl(path, stats, text_field, max_doc_bytes)
    elif path.endswith(".json"):
        yield from read_json_array(path, stats, text_field, max_doc_bytes)
    else:
        yield from read_text_file(path, stats, max_doc_bytes)


def read_labelled_lines(path, stats):
    """(label, text) from lines `<label> <text>` (SST-2's `1 a stirring , funny ...`, TREC's `LOC:city
    Which city ...`). Invalid UTF-8 is replaced and counted; lines without text are skipped and counted."""
    if not os.path.exists(path):
        raise DataError(f"input {path} does not exist")
    with open(path, "rb") as f:
        for raw in f:
            label, _, text = _decode(raw, stats).strip().partition(" ")
            if not text.strip():
                stats["skipped_no_text"] += bool(label)
                continue
            yield label, text.strip()


def read_lines(path, stats):
    """Every non-empty line of a text file is one document (e.g. one Wikipedia article per line)."""
    if not os.path.exists(path):
        raise DataError(f"input {path} does not exist")
    with open(path, "rb") as f:
        for raw in f:
            line = _decode(raw, stats).strip()
            if line:
                yield line


def read_sources(sources, stats, text_field="text", max_doc_bytes=64 << 20, download_dir=None, sha256=None,
                 keep_downloads=True, dist=None):
    """
    Documents from every source in order. A URL is downloaded to `download_dir` just before it is
    read (so a corpus of many shards streams shard by shard) and, with keep_downloads=False,
    deleted once read. Under torchrun rank 0 downloads while the others wait at a barrier, then
    every rank reads the file (download_dir must be on a file system every rank sees).
    `lines:PATH` reads one document per line; `labelled:PATH` one per `<label> <text>` line, label dropped.
    """
    rank = dist.get_rank() if dist is not None else 0
    for source in sources:
        if source.startswith("lines:"):
            yield from read_lines(source[len("lines:"):], stats)
            continue
        if source.startswith("labelled:"):
            yield from (text for _, text in read_labelled_lines(source[len("labelled:"):], stats))
            continue
        url = source.startswith(("http://", "https://"))
        if url:
            dest = os.path.join(download_dir or tempfile.gettempdir(), os.path.basename(source.split("?")[0]))
            if rank == 0:
                download(source, dest, sha256=sha256 or known_sha256(source))
            if dist is not None:
                dist.barrier()
            source = dest
        try:
            yield from read_path(source, stats, text_field, max_doc_bytes)
        finally:  # also when the reader stops early (max_tokens)
            if url and not keep_downloads:
                if dist is not None:
                    dist.barrier()  # every rank has finished reading it
                if rank == 0:
                    os.remove(source)


# -----------------------------------------------------------------------------
# curation data: BigScience's OSCAR filtering lists and per-language thresholds, as JSON in data/roots/
# (Apache-2.0; bigscience-workshop/data-preparation @ 9d05884, preprocessing/training/01b_oscar_cleaning_and_filtering/)

ROOTS_DIR = os.path.join(HERE, "data", "roots")


@functools.lru_cache(maxsize=None)
def roots_resources(roots_dir=ROOTS_DIR):
    """Parameters per language, closed-class ("stop") and flagged word sets, and ROOTS' special characters."""
    def load(name):
        path = os.path.join(roots_dir, name)
        if not os.path.isfile(path):
            raise DataError(f"{path} is missing: it ships with nanoroots (git checkout data/roots), or set --curate=False")
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    chars = load("special_characters.json")
    # ROOTS tests `char in special_characters` one character at a time: only single-code-point emoji can match
    special = set(chars["main_special_characters"] + chars["other_special_characters"])
    special = special | {e for e in chars["emoji"] if len(e) == 1}
    stopwords = {lang: frozenset(words) for lang, words in load("stopwords.json").items()}
    votes = defaultdict(list)  # word -> the languages whose closed-class list has it (for language identification)
    for lang, words in [*((l, stopwords[l]) for l in VOTING_LANGS if l in stopwords), *OTHER_CLOSED_CLASS.items()]:
        for word in set(words):
            votes[word].append(lang)
    is_special = np.zeros(0x110000, dtype=bool)  # by code point, for counting with numpy
    is_special[[ord(c) for c in special]] = True
    return SimpleNamespace(params=load("parameters_filtering.json"), stopwords=stopwords,
                           flagged={lang: frozenset(words) for lang, words in load("flagged_words.json").items()},
                           special=frozenset(special), is_special=is_special, votes=dict(votes))


def params_for(res, lang):
    """ROOTS' thresholds for `lang`; "default" for languages it had no table for (filtering.py LoadParameters)."""
    return res.params.get(lang, res.params["default"])


# -----------------------------------------------------------------------------
# language identification without a downloaded model: which script the letters are in, then, for scripts that
# several candidate languages share, whose closed-class words the document uses most

# Unicode blocks of letters that point at languages (ISO 15924 script codes); other characters do not vote
SCRIPT_BLOCKS = [
    (0x0041, 0x005A, "Latn"), (0x0061, 0x007A, "Latn"), (0x00C0, 0x024F, "Latn"), (0x0370, 0x03FF, "Grek"),
    (0x0400, 0x052F, "Cyrl"), (0x0530, 0x058F, "Armn"), (0x0590, 0x05FF, "Hebr"), (0x0600, 0x06FF, "Arab"),
    (0x0750, 0x077F, "Arab"), (0x0780, 0x07BF, "Thaa"), (0x0900, 0x097F, "Deva"), (0x0980, 0x09FF, "Beng"),
    (0x0B80, 0x0BFF, "Taml"), (0x0E00, 0x0E7F, "Thai"), (0x1000, 0x109F, "Mymr"), (0x10A0, 0x10FF, "Geor"),
    (0x1100, 0x11FF, "Hang"), (0x1E00, 0x1EFF, "Latn"), (0x3040, 0x30FA, "Kana"), (0x3130, 0x318F, "Hang"),
    (0x3400, 0x4DBF, "Hani"), (0x4E00, 0x9FFF, "Hani"), (0xAC00, 0xD7AF, "Hang"), (0xF900, 0xFAFF, "Hani"),
    (0xFB50, 0xFDFF, "Arab"), (0xFE70, 0xFEFF, "Arab"), (0x20000, 0x2FA1F, "Hani"),
]
SCRIPTS = sorted({s for _, _, s in SCRIPT_BLOCKS})
BLOCK_FIRST = np.array([b[0] for b in SCRIPT_BLOCKS])
BLOCK_LAST = np.array([b[1] for b in SCRIPT_BLOCKS])
BLOCK_SCRIPT = np.array([SCRIPTS.index(b[2]) for b in SCRIPT_BLOCKS])
# scripts -> candidate languages: the ROOTS languages, and one language for scripts that have about one on the web
SCRIPT_LANGS = {"Latn": ("ca", "en", "es", "eu", "fr", "id", "pt", "vi", "de", "it", "nl", "pl", "sv"),
                "Arab": ("ar", "ur"), "Hani": ("zh",), "Kana": ("ja",), "Deva": ("hi",), "Beng": ("bn",),
                "Hang": ("ko",), "Grek": ("el",), "Hebr": ("he",), "Thai": ("th",), "Armn": ("hy",),
                "Geor": ("ka",), "Taml": ("ta",), "Mymr": ("my",), "Thaa": ("dv",)}
VOTING_LANGS = SCRIPT_LANGS["Latn"] + SCRIPT_LANGS["Arab"]
# Five frequent web languages that ROOTS did not filter, written for nanoroots: their most frequent function
# words (articles, pronouns, prepositions, conjunctions, auxiliaries), so their documents are named, not
# mistaken for the nearest ROOTS language. They only vote; the closed-class filter uses ROOTS' lists.
OTHER_CLOSED_CLASS = {lang: words.split() for lang, words in {
    "de": "der die das und ist nicht mit von den dem des auf für ein eine einer eines sich auch werden wird "
          "sind zu im bei oder aber wie wir ich sie es dass nach aus noch über nur zum zur vom wenn kann",
    "it": "il di che della delle dei degli per non con una sono anche gli alla nel nella più come questo "
          "questa ma è del ed si lo da al dal sul tra fra hanno essere",
    "nl": "de het een en van is dat niet op te zijn voor met ook aan er maar als bij om wordt naar uit dan "
          "wat nog deze door hebben heeft werd",
    "pl": "i w z na się nie do to że jest o jak po co ale od za przez dla jego już tak czy są oraz ze może "
          "tym który która które także",
    "sv": "och att det som en på är av för med till den har inte om ett var jag men de så kan från eller "
          "vi sig när också",
}.items()}
# below this share of closed-class words (each shared word split between the languages that list it), a
# Latin- or Arabic-script text is "und": measured on the crawl sample, Czech, Hungarian and Romanian pages
# score 0.01-0.07 against these lists while English, Spanish, French... pages mostly score 0.1-0.45
LANG_MIN_CLOSED = 0.05
# share of kana among CJK letters above which a text is Japanese: measured, the crawl sample's Japanese pages
# are 0.63-0.78 kana, the Chinese Wikipedia paragraphs at most 0.12 (katakana names)
KANA_MIN_FOR_JA = 0.3
# languages written without spaces between words: their near-dup shingles are characters, not words
UNSPACED_LANGS = {"zh", "ja", "th", "my"}


def script_bytes(text):
    """UTF-8 bytes of letters per script. Bytes, not characters: a Chinese character (3 bytes) then weighs
    about what the letters of a short English word do."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    block = np.searchsorted(BLOCK_FIRST, cp, side="right") - 1
    inside = (block >= 0) & (cp <= BLOCK_LAST[block.clip(0)])
    size = 1 + (cp >= 0x80).astype(int) + (cp >= 0x800) + (cp >= 0x10000)
    totals = np.bincount(BLOCK_SCRIPT[block[inside]], weights=size[inside], minlength=len(SCRIPTS))
    return dict(zip(SCRIPTS, totals.tolist()))


def closed_class_votes(text, langs, res):
    """Per language, the share of the words that are on its closed-class list; a word on k lists counts 1/k."""
    words = words_of(text, res, lower=True)
    votes = Counter()
    for word, n in Counter(words).items():
        voters = res.votes.get(word, ())
        for lang in voters:
            votes[lang] += n / len(voters)
    return {lang: votes[lang] / max(len(words), 1) for lang in langs}


def identify_language(text, res):
    """(language code, score in [0, 1]). "und-<script>" when the script is known but the language is not,
    "und" when the text has no letters. score = the script's share of the letters, times r1 / (r1 + r2) for
    the closed-class shares r1 >= r2 of the two best languages where a script has several."""
    by_script = script_bytes(text)
    total = sum(by_script.values())
    if total == 0:
        return "und", 0.0
    script = max(SCRIPTS, key=lambda s: (by_script[s], s))
    share = by_script[script] / total
    if script in ("Hani", "Kana"):
        cjk = by_script["Hani"] + by_script["Kana"]
        return ("ja" if by_script["Kana"] >= KANA_MIN_FOR_JA * cjk else "zh"), cjk / total
    langs = SCRIPT_LANGS.get(script)
    if langs is None:
        return f"und-{script}", share
    if len(langs) == 1:
        return langs[0], share
    (r1, best), (r2, _) = sorted(((r, lang) for lang, r in closed_class_votes(text, langs, res).items()), reverse=True)[:2]
    if r1 < LANG_MIN_CLOSED:
        return f"und-{script}", share
    return best, share * r1 / (r1 + r2)


def wanted_languages(lang, lang_id=True):
    """The set of language codes to keep, or None for "auto" (every identified language)."""
    if lang == "auto":
        return None
    codes = {c.strip() for c in lang.split(",") if c.strip()}
    known = {l for langs in SCRIPT_LANGS.values() for l in langs}
    if lang_id and codes - known:
        raise DataError(f"lang={lang!r}: {', '.join(sorted(codes - known))} cannot be identified here; identifiable: "
                        f"{', '.join(sorted(known))}; or set --lang_id=False to treat every document as that language")
    if not lang_id and len(codes) != 1:
        raise DataError(f"lang_id=False needs one language in --lang (every document is taken to be it), got {lang!r}")
    return codes


# -----------------------------------------------------------------------------
# cleaning ("modifying documents", ROOTS filtering.py ModifyingDocuments)

# ROOTS `uniform_whitespace`: these spaces (and U+0084) become an ASCII space
UNIFORM_WHITESPACE = re.compile("[\u00a0\u2002\u2003\u2005\u2008\u2009\u200a\u202f\u3000\ufffc\u0084]")


@functools.lru_cache(maxsize=None)
def suspect_words(bad, cutoff):
    """Words (runs between spaces, tabs, newlines) that contain a bad substring or are longer than cutoff."""
    alternatives = [f"[^ \t\n]*(?:{'|'.join(map(re.escape, bad))})[^ \t\n]*"] if bad else []
    long = [f"[^ \t\n]{{{cutoff + 1},}}"] if cutoff is not None else []
    return re.compile("(?<![^ \t\n])(?:" + "|".join(alternatives + long) + ")")  # tried at word starts only


# separator runs, matched only from where a run starts (linear time): one holding a newline ends a line, then
# one holding a tab ends a cell, then spaces
LINE_BREAK_RUN = re.compile("(?<![ \t\n])[ \t\n]*\n[ \t\n]*")
TAB_RUN = re.compile("(?<![ \t])[ \t]*\t[ \t]*")
SPACE_RUN = re.compile(" {2,}")


def rejoin(text):
    """What ROOTS' split on "\\n", then "\\t", then " ", and re-join does: runs of separators collapse, and
    empty words, tab cells and lines vanish. (Whole-text regexes; tests check it equals the split/join.)"""
    text = LINE_BREAK_RUN.sub("\n", text)
    text = TAB_RUN.sub("\t", text)
    return SPACE_RUN.sub(" ", text).strip(" \t\n")


def clean_document(text, params, res, nfc=False):
    """Strip, map exotic spaces to " ", then (per the language's parameters) drop words containing
    `incorrect_word_substrings` (http, www, .com, href, //) and words longer than `length_word_max_cutoff`
    unless short enough without their special characters at the ends, and re-join (see `rejoin`)."""
    if nfc:
        text = unicodedata.normalize("NFC", text)
    text = text.strip()
    if params["cond_uniform_whitespace"]:
        text = UNIFORM_WHITESPACE.sub(" ", text)
    bad = tuple(params["incorrect_word_substrings"]) if params["cond_remove_words_with_incorrect_substrings"] else ()
    cutoff = params["length_word_max_cutoff"] if params["cond_remove_long_words"] else None
    if not bad and cutoff is None:
        return text

    def keep(word):
        core = strip_special(word, res.special)
        if any(b in core for b in bad):
            return False
        return cutoff is None or len(word) <= cutoff or 0 < len(core) <= cutoff

    return rejoin(suspect_words(bad, cutoff).sub(lambda m: m.group() if keep(m.group()) else "", text))


# -----------------------------------------------------------------------------
# quality filters (ROOTS filtering.py Filtering), evaluated in ROOTS' order, inclusive bounds

WORD_SEPARATORS = re.compile("[ \n\t]+")  # ROOTS splits words on exactly these three (split_on_whitespace)
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CHINESE_PIECES = re.compile(f"[{HAN}]|[^\\s{HAN}]+")
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
DIGITS = re.compile(r"\d")


def strip_special(word, special):
    """word.strip(special) for a set: ROOTS' ModifyingDocuments.strip."""
    i, j = 0, len(word)
    while i < j and word[i] in special:
        i += 1
    while j > i and word[j - 1] in special:
        j -= 1
    return word[i:j]


def words_of(text, res, lower=False, chinese=False):
    """ROOTS' words: split on space/newline/tab, optionally lower-case, strip special characters from both
    ends, drop empties. Chinese: ROOTS normalised (control characters deleted, lower case, digits -> 0) and took
    SentencePiece pieces; SentencePiece is not a dependency here, so every Han character is a word and other
    runs split on whitespace (character bigrams then come from the zh augmentation, below)."""
    if chinese:
        text = " ".join(CHINESE_PIECES.findall(DIGITS.sub("0", CONTROL_CHARS.sub("", text)).lower()))
    elif lower:
        text = text.lower()
    s = res.special
    words = (w if w[0] not in s and w[-1] not in s else strip_special(w, s) for w in WORD_SEPARATORS.split(text) if w)
    return [w for w in words if w]


def augment_words(words, params):
    """zh and vi also look up consecutive word groups (ROOTS words_augmentation: sizes [2], joined by "" / " ")."""
    if not params["cond_words_augmentation"]:
        return words
    join = params["words_augmentation_join_char"]
    return words + [join.join(words[i:i + g]) for g in params["words_augmentation_group_sizes"]
                    for i in range(len(words) - g + 1)]


def char_ngram_counts(text, n):
    """Counts of the distinct overlapping character n-grams, in no order. An n-gram is keyed by a polynomial
    of its code points: exact for n <= 3 (21 bits each), a 64-bit hash beyond (two n-grams of a 1 MB document
    share a key with probability ~3e-8)."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    m = len(cp) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    base = np.uint64(1 << 21 if n <= 3 else 0x100000001B3)  # FNV-1's 64-bit prime
    key = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        key = key * base + cp[j:j + m]
    key.sort()
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    return np.diff(np.append(starts, m))


def char_repetition_ratio(text, n, k_rule="code"):
    """Share of all character n-grams taken by the k most frequent distinct ones (ROOTS
    compute_character_repetition_ratio). k = floor(sqrt(#distinct)) in the paper (App. C); the code that ran
    also caps k at the number of n-grams seen twice or more, so a text without repeats scores 0."""
    counts = char_ngram_counts(text, n)
    if len(counts) == 0:
        return 0.0
    k = math.isqrt(len(counts))
    if k_rule == "code":
        k = min(k, int((counts > 1).sum()))
    return float(np.sort(counts)[::-1][:k].sum() / counts.sum())


def word_repetition_ratio(words, n):
    """Share of the word n-grams that occur more than once (ROOTS compute_word_repetition_ratio)."""
    grams = Counter(zip(*(words[i:] for i in range(n))))
    if not grams:
        return 0.0
    return sum(c for c in grams.values() if c > 1) / (len(words) - n + 1)


def special_characters_ratio(text, is_special):
    """Share of the characters that are in ROOTS' special set (punctuation, digits, whitespace, symbols, emoji)."""
    return float(is_special[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)].mean()) if text else 0.0


def word_list_ratio(words, candidates, word_set):
    """Hits of `candidates` (words plus augmentation) in `word_set`, per word, clipped to 1 (ROOTS stopwords
    and flagged-words ratios)."""
    if not words:
        return 0.0
    return min(1.0, sum(w in word_set for w in candidates) / len(words))


FILTERS = ("words", "char_rep", "word_rep", "special", "closed_class", "flagged", "ppl")  # ROOTS' order


def filter_bounds(res, lang, ppl_max=0.0, with_ppl=False):
    """{filter: (min, max)} for `lang`, inclusive, None = no bound; a filter that is off is absent. Thresholds
    are ROOTS' parameters_filtering; a language without a closed-class or flagged list skips that check, as in
    ROOTS. Perplexity has no ROOTS threshold that carries over (theirs belong to their KenLM models)."""
    p = params_for(res, lang)
    table = {
        "words": ("cond_check_number_words", p["number_words_min_cutoff"], p["number_words_max_cutoff"]),
        "char_rep": ("cond_check_character_repetition_removal", None, p["character_repetition_max_cutoff"]),
        "word_rep": ("cond_check_word_repetition_removal", None, p["word_repetition_max_cutoff"]),
        "special": ("cond_check_special_characters", None, p["special_characters_max_cutoff"]),
        "closed_class": ("cond_check_stopwords", p["stopwords_min_cutoff"], None),
        "flagged": ("cond_check_flagged_words", None, p["flagged_words_max_cutoff"]),
    }
    bounds = {name: (lo, hi) for name, (flag, lo, hi) in table.items() if p[flag]}
    if lang not in res.stopwords:
        bounds.pop("closed_class", None)
    if lang not in res.flagged:
        bounds.pop("flagged", None)
    if with_ppl:
        bounds["ppl"] = (None, ppl_max or None)
    return bounds


def quality_filters(text, lang, res, char_rep_k="code", short_circuit=True, perplexity=None, ppl_max=0.0):
    """(first failing filter or None, {filter: value}) for a cleaned document in language `lang`."""
    p = params_for(res, lang)
    chinese = p["tokenization"]  # zh: ROOTS took SentencePiece words
    lowered = functools.cache(lambda: words_of(text, res, lower=True, chinese=chinese))
    measure = {
        "words": lambda: len(words_of(text, res, chinese=chinese)),
        "char_rep": lambda: char_repetition_ratio(text, p["character_repetition_length"], char_rep_k),
        "word_rep": lambda: word_repetition_ratio(lowered(), p["word_repetition_length"]),
        "special": lambda: special_characters_ratio(text, res.is_special),
        "closed_class": lambda: word_list_ratio(lowered(), augment_words(lowered(), p), res.stopwords[lang]),
        "flagged": lambda: word_list_ratio(lowered(), augment_words(lowered(), p), res.flagged[lang]),
        "ppl": lambda: perplexity(text),
    }
    failed, values = None, {}
    for name, (lo, hi) in filter_bounds(res, lang, ppl_max, perplexity is not None).items():
        value = values[name] = measure[name]()
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            failed = failed or name
            if short_circuit:
                break
    return failed, values


class PerplexityScorer:
    """Perplexity of a document under a nanoroots checkpoint: ROOTS scored with per-language KenLM 5-gram models
    trained on Wikipedia (cc_net style); here a causal checkpoint trained on reference text plays that part.
    ppl = exp(mean next-token loss), the first token predicted from <|endoftext|>, in windows of block_size."""

    def __init__(self, path, batch_size=8):
        import torch
        from model import CheckpointError, load_checkpoint, model_from_checkpoint
        from tokenizer import tokenizer_from_spec
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as e:
            raise DataError(f"ppl_model: {e}") from None
        if "tokenizer" not in checkpoint or not checkpoint["model_args"].get("causal", True):
            raise DataError(f"ppl_model={path} must be a causal (GPT) checkpoint saved by train.py, with its tokenizer")
        self.torch, self.batch_size = torch, batch_size
        self.model = model_from_checkpoint(checkpoint).eval()
        self.tok = tokenizer_from_spec(checkpoint["tokenizer"])
        self.block = self.model.config.block_size

    def __call__(self, text):
        torch = self.torch
        if self.tok.kind == "char":  # characters the model never saw cannot be scored: they are skipped
            text = "".join(c for c in text if c in self.tok.stoi)
        seq = torch.tensor([self.tok.special_ids[EOT]] + self.tok.encode(text))
        n = len(seq) - 1
        if n == 0:
            return math.inf
        pad = -n % self.block
        inputs = torch.cat([seq[:-1], seq.new_zeros(pad)]).view(-1, self.block)  # (windows, block)
        targets = torch.cat([seq[1:], seq.new_full((pad,), -100)]).view(-1, self.block)
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(inputs), self.batch_size):
                _, loss = self.model(inputs[i:i + self.batch_size], targets[i:i + self.batch_size])
                total += loss.item() * int((targets[i:i + self.batch_size] != -100).sum())
        return math.exp(total / n)


# -----------------------------------------------------------------------------
# deduplication: exact (ROOTS catalogue dedup_document) and MinHash LSH near-duplicates (datatrove's defaults)

EXACT_IGNORED = re.compile(r"[\s\d!-/:-@\[-`{-~]+")  # whitespace, digits, ASCII punctuation


def exact_dedup_key(text):
    """Signed 64-bit key of the text without whitespace, digits and ASCII punctuation: ROOTS hashed that string
    with MD5 (first copy wins); we keep MD5's first 8 bytes."""
    digest = hashlib.md5(EXACT_IGNORED.sub("", text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


SHINGLE = 5  # datatrove MinhashConfig n_grams
WORD_RUNS = re.compile(r"\w+")


def mix64(x):
    """splitmix64's finaliser: spreads every input bit over the 64 output bits (x: uint64 array)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(text, unspaced=False):
    """Distinct 32-bit hashes of the word 5-grams (character 5-grams for languages written without spaces),
    after datatrove's simplification: lower case, digits -> 0, punctuation and symbols separate words."""
    words = WORD_RUNS.findall(DIGITS.sub("0", text.lower()))
    if unspaced:
        units = np.frombuffer("".join(words).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    else:
        ids = {w: int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little") for w in set(words)}
        units = np.array([ids[w] for w in words], dtype=np.uint64)
    m = len(units) - SHINGLE + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    for j in range(SHINGLE):
        h = h * np.uint64(0x100000001B3) + units[j:j + m]
    return np.unique(mix64(h) >> np.uint64(32))


@functools.lru_cache(maxsize=None)
def minhash_permutations(num_perm):
    """a (odd), b of the hashes h -> ((a*h + b) mod 2^64) >> 32 of 32-bit shingle hashes: multiply-add-shift, a
    strongly universal family (Dietzfelbinger 1996) that needs no division; datatrove uses (a*h + b) mod
    (2^61 - 1). Drawn from stable hashes, so every process and run uses the same ones."""
    a = np.array([stable_hash("minhash-a", i) | 1 for i in range(num_perm)], dtype=np.uint64)
    b = np.array([stable_hash("minhash-b", i) for i in range(num_perm)], dtype=np.uint64)
    return a, b


def minhash_signature(hashes, num_perm):
    """(num_perm,) uint64 < 2^32: per hash function, the minimum over the document's shingle hashes."""
    a, b = minhash_permutations(num_perm)
    signature = np.full(num_perm, 2**32, dtype=np.uint64)
    for i in range(0, len(hashes), 4096):  # (4096, num_perm) at a time keeps memory flat for long documents
        values = (hashes[i:i + 4096, None] * a + b) >> np.uint64(32)
        signature = np.minimum(signature, values.min(axis=0))
    return signature


def band_hashes(signature, bands, rows):
    """One signed 64-bit hash per LSH band of `rows` signature values: two documents are near-duplicate
    candidates when any band agrees. 14 bands x 8 rows (datatrove) flag Jaccard ~ (1/14)^(1/8) = 0.72 and up."""
    values = signature.astype("<u8")
    return [int.from_bytes(hashlib.blake2b(values[i * rows:(i + 1) * rows].tobytes(), digest_size=8).digest(),
                           "little", signed=True) for i in range(bands)]


def find_duplicates(exact, near):
    """
    Duplicates over the whole corpus. exact: (docs, keys) int64 arrays; near: (docs, bands) arrays, bands of
    shape (len(docs), n_bands). Returns ({doc: (reason, kept doc)}, near-duplicate clusters as sorted lists).
    The first copy wins: exact copies keep the lowest index; near-duplicate clusters are unions (union-find)
    of documents that share a band, and keep their lowest index, which the union makes the root.
    """
    drop = {}
    docs, keys = exact
    order = np.lexsort((docs, keys))
    docs, keys = docs[order], keys[order]
    new_key = np.ones(len(keys), dtype=bool)
    new_key[1:] = keys[1:] != keys[:-1]
    first = docs[np.flatnonzero(new_key)][np.cumsum(new_key) - 1]  # the first copy of each document's key
    for doc, original in zip(docs[~new_key].tolist(), first[~new_key].tolist()):
        drop[doc] = ("exact_dup", original)

    parent = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    near_docs, bands = near
    alive = np.array([d not in drop for d in near_docs.tolist()], dtype=bool)
    near_docs, bands = near_docs[alive], bands[alive]
    for band in bands.T:
        order = np.lexsort((near_docs, band))
        d, h = near_docs[order], band[order]
        same = np.flatnonzero(h[1:] == h[:-1]) + 1  # positions whose band equals the previous document's
        for a, b in zip(d[same - 1].tolist(), d[same].tolist()):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    clusters = defaultdict(list)
    for doc in sorted(parent):
        clusters[find(doc)].append(doc)
    for root, members in clusters.items():
        for doc in members:
            if doc != root:
                drop[doc] = ("near_dup", root)
    return drop, sorted(([root] + [m for m in members if m != root] for root, members in clusters.items()),
                        key=lambda c: (-len(c), c[0]))


# -----------------------------------------------------------------------------
# PII redaction (ROOTS 02_pii/bigscience_pii_detect_redact.py: KEY, EMAIL, USER, IP_ADDRESS; its ID and
# phone patterns were disabled for false positives, so PHONE here is off by default)

IPV4_PART = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PII_PATTERNS = {  # on overlapping matches the earlier start wins, then the longer, then the earlier kind here
    "EMAIL": re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])"),
    "IP_ADDRESS": re.compile(rf"(?<![\w.:])(?:{IPV4_PART}\.){{3}}{IPV4_PART}(?!\w|\.\d)"
                             r"|(?<![\w.:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"),
    "KEY": re.compile(r"(?<![\w+/=-])[A-Za-z0-9_+/=-]{20,}(?![\w+/=-])"),
    "USER": re.compile(r"(?<![\w@.+-])@(\w{3,})(?![\w@])"),
    "PHONE": re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]\d{3,4}[ .-]\d{3,4}(?!\w|[.-]\d)"),
}
# `@word` that is code, not a handle: CSS at-rules, decorators, doc-comment and BibTeX tags (ROOTS redacted these)
CODE_AT_WORDS = {"media", "import", "font", "keyframes", "charset", "supports", "page", "namespace", "layer",
                 "property", "container", "document", "viewport", "counter", "staticmethod", "classmethod",
                 "dataclass", "override", "param", "return", "returns", "throws", "author", "see", "since",
                 "deprecated", "link", "article", "book", "inproceedings", "misc", "interface", "end"}
VERSION_BEFORE = re.compile(r"(?i)\b(?:version|ver\.?|release|build|v)[\s:]*$")


def _is_pii(kind, match, text):
    """The checks a regex cannot make: valid IPv6, not a version number, a key with letter/digit mixing."""
    found = match.group()
    if kind == "IP_ADDRESS":
        if VERSION_BEFORE.search(text[max(0, match.start() - 12):match.start()]):
            return False
        if ":" in found:
            try:
                ipaddress.IPv6Address(found)
            except ValueError:
                return False
        return any(c.isdigit() for c in found)
    if kind == "KEY":  # hashes, API keys, UUIDs switch between letters and digits many times; words do not
        kinds = [c.isdigit() for c in found if c.isalnum()]
        return sum(a != b for a, b in zip(kinds, kinds[1:])) >= 4
    if kind == "USER":
        return match.group(1).lower() not in CODE_AT_WORDS
    return True


def find_pii(text, kinds=("EMAIL", "IP_ADDRESS", "KEY", "USER")):
    """Non-overlapping (start, end, kind) spans of personal data, in text order."""
    kinds = [k for k in kinds if k not in ("EMAIL", "USER") or "@" in text]
    spans = sorted((m.start(), -m.end(), priority, kind) for priority, kind in enumerate(kinds)
                   for m in PII_PATTERNS[kind].finditer(text) if _is_pii(kind, m, text))
    chosen, end = [], 0
    for start, neg_end, _, kind in spans:
        if start >= end:
            chosen.append((start, -neg_end, kind))
            end = -neg_end
    return chosen


def redact_pii(text, kinds=("EMAIL", "IP_ADDRESS", "KEY", "USER")):
    """(text with each span replaced by PI:<KIND>, Counter of kinds). Spans are replaced right to left, so
    earlier offsets stay valid; ROOTS' global str.replace also hit every other occurrence of the string."""
    found = Counter()
    for start, end, kind in reversed(find_pii(text, kinds)):
        text = f"{text[:start]}PI:{kind}{text[end:]}"
        found[kind] += 1
    return text, found


# -----------------------------------------------------------------------------
# pass 1: each rank streams its share of the documents through the per-document stages

REASON_STAGE = {"empty": "lang", "lang": "lang", **{f: "filters" for f in FILTERS},
                "exact_dup": "exact_dedup", "near_dup": "near_dedup"}
# fixed histogram bins keep memory flat: ratios in [0, 1], counts and perplexities on a log scale
HIST_EDGES = {f: np.linspace(0, 1, 51) for f in FILTERS} | {"words": np.logspace(0, 6, 61), "ppl": np.logspace(0, 6, 61)}
SNIPPET = 300  # characters of each example shown in the report


class Tally:
    """What one process saw, in sums that add up across ranks: documents and bytes read, bytes changed by the
    cleaning and PII stages, removals by reason (the 3 first examples each), seconds and bytes per stage (for
    MB/s), filter-value histograms per language, languages, PII kinds."""

    def __init__(self):
        self.docs, self.bytes = Counter(), Counter()          # "read", "removed:<reason>", "changed:<stage>"
        self.seconds, self.work = Counter(), Counter()        # per stage: seconds spent, bytes processed
        self.langs, self.pii = Counter(), Counter()
        self.hist = {}                                        # (filter, lang) -> counts over HIST_EDGES[filter]
        self.examples = defaultdict(list)                     # reason -> [{doc, lang, values, text}]
        self.peak_rss_mb = {}                                 # rank -> peak resident memory

    def lap(self, stage, since, nbytes=0):
        now = time.perf_counter()
        self.seconds[stage] += now - since
        self.work[stage] += nbytes
        return now

    def remove(self, reason, doc, lang, size, values, text):
        self.docs["removed:" + reason] += 1
        self.bytes["removed:" + reason] += size
        if len(self.examples[reason]) < 3:
            self.examples[reason].append({"doc": doc, "lang": lang, "values": values, "text": text[:SNIPPET]})

    def observe(self, lang, values):
        for name, value in values.items():
            edges = HIST_EDGES[name]
            counts = self.hist.setdefault((name, lang), np.zeros(len(edges) - 1, dtype=np.int64))
            counts[min(max(np.searchsorted(edges, value, side="right") - 1, 0), len(counts) - 1)] += 1

    def add(self, other):
        for mine, theirs in ((self.docs, other.docs), (self.bytes, other.bytes), (self.seconds, other.seconds),
                             (self.work, other.work), (self.langs, other.langs), (self.pii, other.pii)):
            mine.update(theirs)
        for key, counts in other.hist.items():
            self.hist[key] = self.hist.get(key, 0) + counts
        for reason, examples in other.examples.items():
            self.examples[reason] = sorted(self.examples[reason] + examples, key=lambda e: e["doc"])[:3]
        self.peak_rss_mb.update(other.peak_rss_mb)
        return self


def peak_rss_mb():
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def curate_shard(documents, rank, world, cfg, stage_path, removed_path):
    """
    Pass 1 over this rank's documents (index % world == rank): language, cleaning, filters, dedup keys, PII.
    Survivors are staged to `stage_path` as {"i", "lang", "text", "bytes", "pii"} lines in index order, every
    removal goes to `removed_path`. Returns (tally, dedup index); the index holds hashes, never text.
    """
    res = roots_resources()
    scorer = PerplexityScorer(cfg.ppl_model) if cfg.filters and cfg.ppl_model else None
    wanted = wanted_languages(cfg.lang, cfg.lang_id)
    fixed_lang = "default" if cfg.lang == "auto" else cfg.lang
    pii_kinds = ("EMAIL", "IP_ADDRESS", "KEY", "USER") + (("PHONE",) if cfg.pii_phone else ())
    tally = Tally()
    exact = {"doc": array.array("q"), "key": array.array("q")}
    near = {"doc": array.array("q"), "bands": array.array("q")}
    with open(stage_path, "w", encoding="utf-8") as staged, open(removed_path, "w", encoding="utf-8") as removed:
        def drop(reason, doc, lang, size, values, text):
            tally.remove(reason, doc, lang, size, values, text)
            removed.write(json.dumps({"doc": doc, "reason": reason, "lang": lang, "values": values}) + "\n")

        clock = time.perf_counter()
        for doc, text in enumerate(tqdm(documents, unit=" docs", desc="curating", mininterval=2, disable=rank or None)):
            if doc % world != rank:  # reading the other ranks' documents is this rank's cost too
                clock = tally.lap("read", clock)
                continue
            size = len(text.encode("utf-8"))
            tally.docs["read"] += 1
            tally.bytes["read"] += size
            clock = tally.lap("read", clock, size)

            lang, score = fixed_lang, 1.0
            if not text.strip():
                drop("empty", doc, "und", size, {}, text)
                continue
            if cfg.lang_id:
                lang, score = identify_language(text, res)
            clock = tally.lap("lang", clock, size)
            tally.langs[lang] += 1
            if (lang not in wanted) if wanted is not None else lang.startswith("und"):
                drop("lang", doc, lang, size, {"lang_score": round(score, 4)}, text)
                continue

            params = params_for(res, lang)
            if cfg.clean:
                cleaned = clean_document(text, params, res, cfg.nfc)
                text, cleaned_size = cleaned, len(cleaned.encode("utf-8"))
                tally.bytes["changed:clean"] += cleaned_size - size
                clock = tally.lap("clean", clock, size)
                size = cleaned_size

            if cfg.filters:
                failed, values = quality_filters(text, lang, res, cfg.char_rep_k, cfg.short_circuit, scorer, cfg.ppl_max)
                tally.observe(lang, values)
                clock = tally.lap("filters", clock, size)
                if failed:
                    drop(failed, doc, lang, size, values, text)
                    continue

            if cfg.dedup:
                exact["doc"].append(doc)
                exact["key"].append(exact_dedup_key(text))
                clock = tally.lap("exact_dedup", clock, size)
            if cfg.near_dedup:
                shingles = shingle_hashes(text, unspaced=lang in UNSPACED_LANGS)
                if len(shingles):  # too short to shingle: never a near-duplicate (datatrove skips these too)
                    near["doc"].append(doc)
                    near["bands"].extend(band_hashes(minhash_signature(shingles, cfg.minhash_bands * cfg.minhash_rows),
                                                     cfg.minhash_bands, cfg.minhash_rows))
                clock = tally.lap("near_dedup", clock, size)

            record = {"i": doc, "lang": lang, "text": text, "bytes": size}
            if cfg.pii:  # redacted now, counted later for the documents that dedup keeps
                record["text"], found = redact_pii(text, pii_kinds)
                record["pii"] = dict(found)
                clock = tally.lap("pii", clock, size)
            staged.write(json.dumps(record, ensure_ascii=False) + "\n")
            clock = time.perf_counter()
    tally.peak_rss_mb[rank] = peak_rss_mb()
    index = {"exact": (np.array(exact["doc"], dtype=np.int64), np.array(exact["key"], dtype=np.int64)),
             "near": (np.array(near["doc"], dtype=np.int64),
                      np.array(near["bands"], dtype=np.int64).reshape(-1, cfg.minhash_bands))}
    return tally, index


# -----------------------------------------------------------------------------
# writing the token bins

def in_val_split(doc_index, val_fraction, seed):
    """Deterministic and independent of order of arrival: a document's split depends on its index."""
    return stable_hash(seed, "split", doc_index) / 2**64 < val_fraction


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
        text = head[0][: len(head[0]) - int(len(head[0]) * val_fraction)]
        return [text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore") if max_bytes else text]
    kept, size = [], 0  # with max_bytes, a max-heap on the key: (-key, index, text)
    for index, text in enumerate(itertools.chain(head, docs)):
        if in_val_split(index, val_fraction, seed):
            continue
        if not max_bytes:
            kept.append((0, index, text))
            continue
        heapq.heappush(kept, (-stable_hash(seed, "tokenizer sample", index), index, text))
        size += len(text.encode("utf-8", "surrogatepass"))
        while size > max_bytes and len(kept) > 1:
            size -= len(heapq.heappop(kept)[2].encode("utf-8", "surrogatepass"))
    return [text for _, _, text in sorted(kept, key=lambda entry: entry[1])]


class BinWriter:
    """Appends token arrays to train.bin/val.bin under temporary names; `commit` renames them."""

    def __init__(self, out_dir, vocab_size):
        self.out_dir = out_dir
        self.dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
        self.tmp = {s: os.path.join(out_dir, f"{s}.bin.tmp{os.getpid()}") for s in ("train", "val")}
        self.files = {s: open(p, "wb") for s, p in self.tmp.items()}
        self.tokens = Counter()
        self.docs = Counter()

    def write(self, split, ids):
        arr = np.asarray(ids, dtype=self.dtype)
        try:
            self.files[split].write(arr.tobytes())
        except OSError as e:
            self.abort()
            raise DataError(f"could not write {split}.bin in {self.out_dir} ({e.strerror}); "
                            f"free some disk space and rerun: the previous outputs are untouched") from None
        self.tokens[split] += len(arr)

    def move_last_doc_to_val(self, n_tokens):
        """Keep val non-empty: the last train document (its last n_tokens) moves to val."""
        f = self.files["train"]
        f.flush()
        size = self.tokens["train"] * self.dtype().itemsize
        with open(self.tmp["train"], "rb") as r:
            r.seek(size - n_tokens * self.dtype().itemsize)
            tail = np.frombuffer(r.read(), dtype=self.dtype)
        f.truncate(size - len(tail) * self.dtype().itemsize)
        f.seek(0, os.SEEK_END)
        self.tokens["train"] -= len(tail)
        self.docs["train"] -= 1
        self.write("val", tail)
        self.docs["val"] += 1

    def commit(self):
        for split, f in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(self.tmp[split], os.path.join(self.out_dir, f"{split}.bin"))

    def abort(self):
        for split, f in self.files.items():
            f.close()
            if os.path.exists(self.tmp[split]):
                os.remove(self.tmp[split])


def write_dataset(docs, tok, out_dir, val_fraction=0.1, seed=1337, max_tokens=0, batch_docs=256):
    """
    Tokenize `docs` (an iterable of strings) into out_dir/{train,val}.bin; each document ends with
    the end-of-text token. Returns the counts that go into meta.json.
    """
    os.makedirs(out_dir, exist_ok=True)
    writer = BinWriter(out_dir, tok.vocab_size)
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
    return {"dtype": np.dtype(writer.dtype).name, "train_tokens": writer.tokens["train"],
            "val_tokens": writer.tokens["val"], "train_docs": writer.docs["train"], "val_docs": writer.docs["val"]}


def write_meta(out_dir, tok, counts, source, stats):
    """meta.json (and tokenizer.json for learned vocabularies), each written atomically."""
    entry = {"kind": tok.kind, "vocab_size": tok.vocab_size, "special_ids": tok.special_ids}
    spec = tok.spec()
    if len(spec) > 1:  # a learned vocabulary is data: it gets its own file, which meta.json names
        atomic_write_text(os.path.join(out_dir, "tokenizer.json"), json.dumps(spec, ensure_ascii=False, separators=(",", ":")))
        entry["file"] = "tokenizer.json"
    meta = {"tokenizer": entry, "vocab_size": tok.vocab_size, **counts, "source": source, "input_stats": dict(stats)}
    atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2, ensure_ascii=False))
    return meta


# -----------------------------------------------------------------------------
# rank 0: global dedup decisions, the kept documents in input order, tokenizer, bins, report

def staged_records(paths):
    """The staged documents of every rank, merged back into input order."""
    files = [open(p, encoding="utf-8") for p in paths]
    try:
        yield from heapq.merge(*(map(json.loads, f) for f in files), key=lambda record: record["i"])
    finally:
        for f in files:
            f.close()


def tokenizer_source(cfg):
    """The prepared dataset whose tokenizer `--tokenizer=` names (a folder under data_root, or a path),
    or None when it names a kind to build."""
    if cfg.tokenizer in ("char", "gpt2", "bpe"):
        return None
    path = cfg.tokenizer if os.path.isdir(cfg.tokenizer) else os.path.join(cfg.data_root, cfg.tokenizer)
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


@contextlib.contextmanager
def atomic_gzip_text(path):
    """Write a gzipped text file under a temporary name, renamed when complete, removed on failure. The gzip
    header holds no name and no time, so the same content gives the same bytes."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as packed:
            with io.TextIOWrapper(packed, encoding="utf-8") as text:
                yield text
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_removed(path, removed_paths, drop):
    """removed.jsonl.gz: every removed document's index, reason and filter values, in input order."""
    dups = ({"doc": doc, "reason": reason, "values": {"duplicate_of": kept}} for doc, (reason, kept) in sorted(drop.items()))
    with contextlib.ExitStack() as files, atomic_gzip_text(path) as out:
        ranks = [map(json.loads, files.enter_context(open(p, encoding="utf-8"))) for p in removed_paths]
        for record in heapq.merge(*ranks, dups, key=lambda r: r["doc"]):
            out.write(json.dumps(record) + "\n")


def write_corpus(cfg, out_dir, source, world, shards, stats, started):
    """After pass 1, on rank 0: decide duplicates for the whole corpus from every rank's hashes, then stream
    the kept documents in input order to count PII and write clean.jsonl.gz, to fit the tokenizer, and to
    write the bins. Writes meta.json, removed.jsonl.gz and the report."""
    tally = functools.reduce(Tally.add, (t for t, _ in shards), Tally())
    clock = time.perf_counter()
    exact = tuple(np.concatenate(parts) for parts in zip(*(index["exact"] for _, index in shards)))
    near = tuple(np.concatenate(parts) for parts in zip(*(index["near"] for _, index in shards)))
    drop, clusters = find_duplicates(exact, near)
    tally.lap("dedup_decision", clock, 0)
    staged = [os.path.join(out_dir, f".staged-{r}.jsonl") for r in range(world)]

    def kept_texts():
        return (record["text"] for record in staged_records(staged) if record["i"] not in drop)

    # summary pass: what dedup removed, PII in the kept documents, the optional clean text
    shown = {c[0] for c in clusters[:5]}
    cluster_text, kept, kept_bytes = {}, 0, 0
    clean_path = os.path.join(out_dir, "clean.jsonl.gz")
    with atomic_gzip_text(clean_path) if cfg.keep_text else contextlib.nullcontext() as clean:
        for record in staged_records(staged):
            doc = record["i"]
            if doc in shown:
                cluster_text[doc] = record["text"][:SNIPPET]
            if doc in drop:
                reason, original = drop[doc]
                tally.remove(reason, doc, record.get("lang"), record["bytes"], {"duplicate_of": original}, record["text"])
                continue
            size = len(record["text"].encode("utf-8"))
            kept, kept_bytes = kept + 1, kept_bytes + size
            tally.docs["kept:" + record.get("lang", "-")] += 1
            tally.bytes["changed:pii"] += size - record["bytes"]
            if record.get("pii"):
                tally.pii.update(record["pii"])
                tally.docs["pii_docs"] += 1
            if clean:
                clean.write(json.dumps({"doc": doc, "lang": record.get("lang"), "text": record["text"]}, ensure_ascii=False) + "\n")

    counts, meta = {}, None
    if kept:
        clock = time.perf_counter()
        tok = fit_tokenizer(cfg, kept_texts)
        counts = write_dataset(kept_texts(), tok, out_dir, cfg.val_fraction, cfg.seed, cfg.max_tokens)
        tally.lap("tokenize", clock, kept_bytes)
        meta = write_meta(out_dir, tok, counts, source, stats)
    tally.peak_rss_mb[0] = peak_rss_mb()
    write_removed(os.path.join(out_dir, "removed.jsonl.gz"), [os.path.join(out_dir, f".removed-{r}.jsonl") for r in range(world)], drop)
    report = build_report(cfg, out_dir, source, world, tally, clusters, cluster_text, counts, stats, time.time() - started)
    write_report(out_dir, report)
    if not tally.docs["read"]:
        raise DataError("the input has no documents; check the path, or the text_field of your .jsonl")
    if not kept:
        raise DataError(f"no document survived curation ({tally.docs['read']} read): see {os.path.join(out_dir, 'report.md')} "
                        f"for the reasons, then loosen --lang or switch a stage off")
    return meta


# -----------------------------------------------------------------------------
# the report: report.json (every number), report.md (for people), plots/*.png

STAGES = ("read", "lang", "clean", "filters", "exact_dedup", "near_dedup", "pii")
FILTER_TITLES = {"words": "number of words", "char_rep": "character n-gram repetition ratio",
                 "word_rep": "word n-gram repetition ratio", "special": "special-character ratio",
                 "closed_class": "closed-class word ratio", "flagged": "flagged-word ratio", "ppl": "perplexity"}


def build_report(cfg, out_dir, source, world, tally, clusters, cluster_text, counts, stats, seconds):
    """Everything the report shows, as plain JSON-able data."""
    res = roots_resources()
    stages, docs, size = [], tally.docs["read"], tally.bytes["read"]
    for stage in STAGES:  # documents and bytes in and out of each stage, derived from the removals and changes
        reasons = [r for r, s in REASON_STAGE.items() if s == stage]
        docs_out = docs - sum(tally.docs["removed:" + r] for r in reasons)
        size_out = size - sum(tally.bytes["removed:" + r] for r in reasons) + tally.bytes["changed:" + stage]
        stages.append({"stage": stage, "docs_in": docs, "docs_out": docs_out, "bytes_in": size, "bytes_out": size_out})
        docs, size = docs_out, size_out
    throughput = [{"stage": stage, "seconds": round(tally.seconds[stage], 6),
                   "mb_per_s": round(tally.work[stage] / tally.seconds[stage] / 1e6, 3) if tally.work[stage] else None}
                  for stage in (*STAGES, "dedup_decision", "tokenize") if tally.seconds[stage]]
    langs = sorted({lang for _, lang in tally.hist}, key=lambda l: -tally.langs[l])
    filters = []
    for name in FILTERS:
        checked = sum(int(c.sum()) for (f, _), c in tally.hist.items() if f == name)
        if checked:
            filters.append({"filter": name, "checked": checked, "removed": tally.docs["removed:" + name],
                            "bytes_removed": tally.bytes["removed:" + name],
                            "bounds": {l: filter_bounds(res, l, cfg.ppl_max, bool(cfg.ppl_model)).get(name) for l in langs
                                       if (name, l) in tally.hist}})
    removed = {reason: {"stage": REASON_STAGE[reason], "docs": tally.docs["removed:" + reason],
                        "bytes": tally.bytes["removed:" + reason], "examples": tally.examples[reason]}
               for reason in REASON_STAGE if tally.docs["removed:" + reason]}
    return {
        "name": os.path.basename(out_dir), "source": source, "ranks": world, "seconds": round(seconds, 2),
        "config": {k: getattr(cfg, k) for k in CURATION_KEYS + ("tokenizer",)},
        "kept": {"docs": stages[-1]["docs_out"], "bytes": stages[-1]["bytes_out"]},
        "stages": stages, "throughput": throughput, "removed": removed, "filters": filters,
        "histograms": {name: {"edges": HIST_EDGES[name].tolist(),
                              "counts": {l: tally.hist[(name, l)].tolist() for l in langs if (name, l) in tally.hist}}
                       for name in FILTERS if any(f == name for f, _ in tally.hist)},
        "languages": {l: {"docs": n, "kept": tally.docs["kept:" + l]} for l, n in tally.langs.most_common()},
        "duplicates": {"exact_removed": tally.docs["removed:exact_dup"], "near_removed": tally.docs["removed:near_dup"],
                       "near_clusters": len(clusters),
                       "largest_clusters": [{"size": len(c), "kept": c[0], "removed": c[1:11], "text": cluster_text.get(c[0], "")}
                                            for c in clusters[:5]]},
        "pii": {"spans": dict(tally.pii), "docs": tally.docs["pii_docs"]},
        "peak_rss_mb": tally.peak_rss_mb,
        "input_stats": dict(stats), "output": counts,
    }


def plot_report(report, plot_dir):
    """plots/filter_<name>.png: the values each filter saw, per language, with its thresholds as dashed lines;
    plots/removals.png: documents removed per reason. Returns {plot name: file name}."""
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    os.makedirs(plot_dir, exist_ok=True)
    written = {}
    bounds = {f["filter"]: f["bounds"] for f in report["filters"]}
    for name, hist in report["histograms"].items():
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        edges = np.array(hist["edges"])
        for i, (lang, counts) in enumerate(list(hist["counts"].items())[:4]):  # the most frequent languages
            ax.stairs(counts, edges, label=lang, color=f"C{i}", fill=i == 0, alpha=0.6 if i == 0 else 1)
            for bound in bounds.get(name, {}).get(lang) or ():
                if bound is not None:
                    ax.axvline(bound, color=f"C{i}", linestyle="--", linewidth=1.5)
        if name in ("words", "ppl"):
            ax.set_xscale("log")
        ax.set(title=f"{name}: {FILTER_TITLES[name]} (dashed: thresholds)", xlabel=FILTER_TITLES[name], ylabel="documents")
        ax.legend(title="language")
        fig.tight_layout()
        fig.savefig(os.path.join(plot_dir, f"filter_{name}.png"), dpi=90)
        plt.close(fig)
        written[name] = f"filter_{name}.png"
    if report["removed"]:
        reasons = list(report["removed"])
        fig, ax = plt.subplots(figsize=(6.4, max(3.2, 0.45 * len(reasons) + 1.2)))
        ax.barh(reasons, [report["removed"][r]["docs"] for r in reasons], color="C3")
        ax.invert_yaxis()
        ax.set(title="documents removed, by reason", xlabel="documents")
        fig.tight_layout()
        fig.savefig(os.path.join(plot_dir, "removals.png"), dpi=90)
        plt.close(fig)
        written["removals"] = "removals.png"
    return written


def md_table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def report_markdown(r, plots):
    pct = lambda part, whole: f"{100 * part / whole:.1f}%" if whole else "-"  # noqa: E731
    mb = lambda b: f"{b / 1e6:,.3f}"  # noqa: E731
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    read = r["stages"][0]
    out = [f"# Data report: {r['name']}\n",
           f"Source `{r['source']}`; lang `{r['config']['lang']}`, tokenizer `{r['config']['tokenizer']}`, "
           f"{r['ranks']} rank(s), {r['seconds']:.1f} s.\n",
           f"**Kept {r['kept']['docs']:,} of {read['docs_in']:,} documents ({pct(r['kept']['docs'], read['docs_in'])}), "
           f"{mb(r['kept']['bytes'])} of {mb(read['bytes_in'])} MB.**\n",
           "## Stages\n",
           "Documents flow top to bottom; MB are UTF-8 text. Cleaning and PII redaction change bytes, not documents.\n",
           md_table(["stage", "docs in", "docs out", "removed", "MB in", "MB out"],
                    [[s["stage"], s["docs_in"], s["docs_out"], pct(s["docs_in"] - s["docs_out"], s["docs_in"]),
                      mb(s["bytes_in"]), mb(s["bytes_out"])] for s in r["stages"]]),
           "## Removals by reason\n"]
    if "removals" in plots:
        out.append(f"![documents removed by reason](plots/{plots['removals']})\n")
    out.append(md_table(["reason", "stage", "docs", "% of read", "MB"],
                        [[k, v["stage"], v["docs"], pct(v["docs"], read["docs_in"]), mb(v["bytes"])] for k, v in r["removed"].items()]))
    out += ["## Filters\n",
            "ROOTS' filters in ROOTS' order, with the thresholds of `data/roots/parameters_filtering.json` for each "
            "document's language (bounds inclusive). " + ("A document is removed by the first filter it fails and is not "
            "checked further, so each filter sees the documents that passed the ones above it.\n" if r["config"]["short_circuit"]
            else "Every filter value is computed for every document; the reason is the first filter failed.\n"),
            md_table(["filter", "keep when (per language)", "checked", "removed", "% removed", "MB removed"],
                     [[f["filter"], "; ".join(f"{l}: " + " ".join(s for s in (f"≥ {fmt(b[0])}" if b and b[0] is not None else "",
                                                                              f"≤ {fmt(b[1])}" if b and b[1] is not None else "") if s) or f"{l}: recorded"
                                              for l, b in list(f["bounds"].items())[:4]),
                       f["checked"], f["removed"], pct(f["removed"], f["checked"]), mb(f["bytes_removed"])] for f in r["filters"]])]
    for name, file in plots.items():
        if name != "removals":
            out.append(f"![{name}](plots/{file})\n")
    out += ["## Languages\n", "Identified from the scripts of the letters and, within a script, from closed-class words.\n",
            md_table(["language", "docs", "kept"], [[l, v["docs"], v["kept"]] for l, v in r["languages"].items()])]
    d = r["duplicates"]
    out += ["## Duplicates\n",
            f"Exact duplicates removed: {d['exact_removed']}. Near-duplicates removed: {d['near_removed']}, "
            f"in {d['near_clusters']} clusters (MinHash LSH, {r['config']['minhash_bands']} bands x "
            f"{r['config']['minhash_rows']} rows; the first document of each cluster is kept).\n"]
    if d["largest_clusters"]:
        out.append(md_table(["size", "kept doc", "removed docs", "kept text"],
                            [[c["size"], c["kept"], ", ".join(map(str, c["removed"])),
                              c["text"][:80].replace("\n", " ").replace("|", "/")] for c in d["largest_clusters"]]))
    out += ["## PII\n", f"Spans redacted in the kept documents ({r['pii']['docs']} documents had some):\n",
            md_table(["kind", "spans"], sorted(r["pii"]["spans"].items())) if r["pii"]["spans"] else "None found.\n",
            "## Throughput\n", "MB of input to each stage per second of one process (all ranks' seconds added).\n",
            md_table(["stage", "seconds", "MB/s per process"], [[t["stage"], f"{t['seconds']:.2f}", t["mb_per_s"] or "-"] for t in r["throughput"]]),
            "Peak memory (RSS) per rank: " + ", ".join(f"rank {k}: {v:,.0f} MB" for k, v in sorted(r["peak_rss_mb"].items())) + ".\n",
            "## Examples of removed documents\n",
            "The first three of each reason, after cleaning, PII redacted, cut at 300 characters; every removal is "
            "listed in `removed.jsonl.gz`.\n"]
    for reason, v in r["removed"].items():
        out.append(f"### {reason}\n")
        for e in v["examples"]:
            values = ", ".join(f"{k}={fmt(x)}" for k, x in e["values"].items())
            text = e["text"].replace("```", "'''") if e["text"].strip() else "(nothing but whitespace)"
            out.append(f"doc {e['doc']} ({e['lang']}): {values or '-'}\n\n```\n{text}\n```\n")
    o = r["output"]
    if o:
        out += ["## Output\n", f"train.bin {o['train_tokens']:,} tokens ({o['train_docs']} docs), val.bin {o['val_tokens']:,} "
                f"tokens ({o['val_docs']} docs), {o['dtype']}; meta.json, removed.jsonl.gz"
                + (", clean.jsonl.gz" if r["config"]["keep_text"] else "") + ".\n"]
    return "\n".join(out)


def write_report(out_dir, report):
    """report.json, plots/*.png and report.md; example texts are PII-redacted first when pii is on."""
    if report["config"]["pii"]:
        for v in report["removed"].values():
            for e in v["examples"]:
                e["text"] = redact_pii(e["text"])[0]
    plots = plot_report(report, os.path.join(out_dir, "plots"))
    atomic_write_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1, ensure_ascii=False))
    atomic_write_text(os.path.join(out_dir, "report.md"), report_markdown(report, plots))


# -----------------------------------------------------------------------------
# ranks: torchrun starts one process per rank; Gloo carries hashes and tallies (never text) to rank 0

def init_distributed():
    """(rank, world size, torch.distributed or None). Under torchrun (WORLD_SIZE > 1) joins a Gloo group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    import datetime
    import torch.distributed as dist
    # ranks wait for the slowest one at the gather; a day's timeout lets big, unevenly split corpora finish
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    return dist.get_rank(), dist.get_world_size(), dist


def gather_to_rank0(obj, rank, world, dist):
    if dist is None:
        return [obj]
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


# -----------------------------------------------------------------------------

def check_config(cfg):
    """Settings that cannot work, as one-line errors before any reading."""
    if cfg.char_rep_k not in ("code", "paper"):
        raise DataError(f"char_rep_k={cfg.char_rep_k!r}: use code (ROOTS' code) or paper (the paper's App. C)")
    if cfg.minhash_bands < 1 or cfg.minhash_rows < 1:
        raise DataError(f"minhash_bands={cfg.minhash_bands}, minhash_rows={cfg.minhash_rows}: both must be >= 1 (default 14 x 8)")
    if cfg.ppl_max and not cfg.ppl_model:
        raise DataError(f"ppl_max={cfg.ppl_max} needs --ppl_model=<checkpoint> to score perplexity with")
    if cfg.curate:
        wanted_languages(cfg.lang, cfg.lang_id)
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
    out_dir = os.path.join(cfg.data_root, name)
    os.makedirs(out_dir, exist_ok=True)
    started = time.time()
    if not cfg.curate:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DataError("curate=False streams the corpus in one process (nothing to split); run it without torchrun")
        meta = write_uncurated(cfg, sources, out_dir)
    else:
        meta = curate_and_write(cfg, sources, out_dir, started)
        if meta is None:  # ranks other than 0
            return None
    print(f"wrote {out_dir}: {meta['train_tokens']:,} train tokens ({meta['train_docs']} docs), "
          f"{meta['val_tokens']:,} val tokens ({meta['val_docs']} docs), {meta['tokenizer']['kind']} vocab "
          f"{meta['vocab_size']}, {time.time() - started:.1f}s" + (f"; input: {meta['input_stats']}" if meta['input_stats'] else "")
          + (f"; report: {os.path.join(out_dir, 'report.md')}" if cfg.curate else ""))
    return meta


def write_uncurated(cfg, sources, out_dir):
    """Without curation no decision depends on other documents: read, tokenize and write in one
    stream, shard by shard, until max_tokens. A learned vocabulary takes a first pass over the
    corpus, which keeps its downloads for the second."""
    stats = Counter()

    def documents(counts, keep):
        return read_sources(sources, counts, cfg.text_field, cfg.max_doc_mb << 20, os.path.join(out_dir, "downloads"),
                            cfg.sha256, keep)

    tok = fit_tokenizer(cfg, lambda: documents(Counter(), True))
    counts = write_dataset(documents(stats, cfg.keep_downloads), tok, out_dir, cfg.val_fraction, cfg.seed, cfg.max_tokens)
    return write_meta(out_dir, tok, counts, ",".join(sources), stats)


def curate_and_write(cfg, sources, out_dir, started):
    """Pass 1 on every rank over its share, then rank 0 decides and writes (write_corpus).
    Returns the meta.json dict on rank 0, None elsewhere."""
    rank, world, dist = init_distributed()
    scratch = [os.path.join(out_dir, f".{kind}-{r}.jsonl") for r in range(world) for kind in ("staged", "removed")]
    finished = False
    try:
        stats = Counter()
        documents = read_sources(sources, stats, cfg.text_field, cfg.max_doc_mb << 20, os.path.join(out_dir, "downloads"),
                                 cfg.sha256, cfg.keep_downloads, dist)
        try:
            shard = curate_shard(documents, rank, world, cfg, os.path.join(out_dir, f".staged-{rank}.jsonl"),
                                 os.path.join(out_dir, f".removed-{rank}.jsonl"))
        except OSError as e:  # staging the documents can fill the disk
            if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            raise DataError(f"could not write in {out_dir} ({e.strerror}); free some disk space and rerun: "
                            f"the previous outputs are untouched") from None
        shards = gather_to_rank0(shard, rank, world, dist)  # tallies and hashes: no text crosses ranks
        finished = rank != 0  # rank 0 reads the other ranks' staged files and removes them
        if rank != 0:
            return None
        return write_corpus(cfg, out_dir, ",".join(sources), world, shards, stats, started)
    finally:
        if not finished:
            for path in scratch if rank == 0 else scratch[2 * rank:2 * rank + 2]:
                if os.path.exists(path):
                    os.remove(path)
        if dist is not None:
            dist.destroy_process_group()


def main(argv=None):
    cfg = configure(DEFAULTS, argv, positional="recipe")
    try:
        prepare(cfg)
    except (DataError, TokenizerError) as e:
        raise SystemExit(f"prepare.py: {e}")


if __name__ == "__main__":
    main()
