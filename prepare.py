"""
The data stage: read documents, tokenize them, and write data/<name>/{train,val}.bin + meta.json.

    python prepare.py shakespeare_char                       # a built-in recipe
    python prepare.py --input=notes.txt --name=notes --tokenizer=gpt2
    python prepare.py --input=https://host/corpus.jsonl.gz --name=web

Inputs: a text file (one document), a folder of text/jsonl files, `.jsonl`/`.jsonl.gz` with a
`text` field (one document per line), or http(s) URLs of any of those, downloaded with retries,
resume and sha256 checks (set NANOROOTS_MIRROR=<dir> to read local copies instead). Several inputs
are separated by commas. Documents are split into train/val deterministically by a stable hash of
their index; a corpus that is one document is split by position (the last `val_fraction`).
Everything streams: no file is ever held whole in memory, and outputs are written to temporary
names and renamed at the end, so an interrupted run leaves the previous outputs intact.
"""

import codecs
import gzip
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import requests
from tqdm import tqdm

from configurator import configure
from tokenizer import EOT, build_tokenizer

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
    tokenizer="char",       # char | gpt2
    val_fraction=0.1,       # share of documents (or of the one document's tokens) kept for validation
    seed=1337,              # seeds the train/val split
    max_tokens=0,           # stop after writing this many tokens (0 = no cap)
)

# Built-in recipes: overrides applied to keys the user left at their defaults.
SHAKESPEARE = os.path.join(HERE, "data", "tinyshakespeare", "input.txt")
RECIPES = {
    "shakespeare_char": dict(input=SHAKESPEARE, tokenizer="char", name="shakespeare_char"),
    "shakespeare": dict(input=SHAKESPEARE, tokenizer="gpt2", name="shakespeare"),
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
    else:
        yield from read_text_file(path, stats, max_doc_bytes)


def read_sources(sources, stats, text_field="text", max_doc_bytes=64 << 20, download_dir=None, sha256=None):
    """Documents from every source in order: local paths, or URLs downloaded to `download_dir` first."""
    for source in sources:
        if source.startswith(("http://", "https://")):
            dest = os.path.join(download_dir or tempfile.gettempdir(), os.path.basename(source.split("?")[0]))
            source = download(source, dest, sha256=sha256 or None)
        yield from read_path(source, stats, text_field, max_doc_bytes)


# -----------------------------------------------------------------------------
# writing the token bins

def in_val_split(doc_index, val_fraction, seed):
    """Deterministic and independent of order of arrival: a document's split depends on its index."""
    return stable_hash(seed, "split", doc_index) / 2**64 < val_fraction


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
        batch = []
        for text in docs:
            n_docs += 1
            if n_docs == 1:  # held back: a corpus of one document is split by position instead
                first_doc = text
                continue
            if first_doc is not None:
                batch.append((0, first_doc))
                first_doc = None
            batch.append((n_docs - 1, text))
            if len(batch) >= batch_docs:
                flush(batch)
                batch = []
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
        atomic_write_text(os.path.join(out_dir, "tokenizer.json"), json.dumps(spec, ensure_ascii=False))
        entry["file"] = "tokenizer.json"
    meta = {"tokenizer": entry, "vocab_size": tok.vocab_size, **counts, "source": source, "input_stats": dict(stats)}
    atomic_write_text(os.path.join(out_dir, "meta.json"), json.dumps(meta, indent=2, ensure_ascii=False))
    return meta


# -----------------------------------------------------------------------------

def prepare(cfg):
    """Run the data stage for a config namespace; returns the meta.json dict."""
    if cfg.recipe:
        if cfg.recipe not in RECIPES:
            raise DataError(f"unknown recipe {cfg.recipe!r}; built-in recipes: {', '.join(RECIPES)}")
        for key, value in RECIPES[cfg.recipe].items():
            if getattr(cfg, key) == DEFAULTS[key]:
                setattr(cfg, key, value)
    sources = cfg.input if isinstance(cfg.input, list) else [s for s in cfg.input.split(",") if s]
    if not sources:
        raise DataError("nothing to read: give a recipe (e.g. `python prepare.py shakespeare_char`) or --input=PATH_OR_URL")
    name = cfg.name or os.path.splitext(os.path.basename(sources[0].rstrip("/")))[0].split(".")[0]
    out_dir = os.path.join(cfg.data_root, name)
    os.makedirs(out_dir, exist_ok=True)
    stats = Counter()

    def documents(counts):
        return read_sources(sources, counts, cfg.text_field, cfg.max_doc_mb << 20,
                            download_dir=os.path.join(out_dir, "downloads"), sha256=cfg.sha256)

    t0 = time.time()
    vocab_text = None
    if cfg.tokenizer == "char":  # a char vocabulary comes from a first pass over the corpus; GPT-2's is fixed
        vocab_text = "".join(sorted(set().union(*map(set, documents(Counter())))))
        if not vocab_text:
            raise DataError("the input has no text; check the path, or the text_field of your .jsonl")
    tok = build_tokenizer(cfg.tokenizer, vocab_text)
    counts = write_dataset(documents(stats), tok, out_dir, cfg.val_fraction, cfg.seed, cfg.max_tokens)
    meta = write_meta(out_dir, tok, counts, ",".join(sources), stats)
    print(f"wrote {out_dir}: {counts['train_tokens']:,} train tokens ({counts['train_docs']} docs), "
          f"{counts['val_tokens']:,} val tokens ({counts['val_docs']} docs), {tok.kind} vocab {tok.vocab_size}, "
          f"{time.time() - t0:.1f}s" + (f"; input: {dict(stats)}" if stats else ""))
    return meta


def main(argv=None):
    cfg = configure(DEFAULTS, argv, positional="recipe")
    try:
        prepare(cfg)
    except DataError as e:
        raise SystemExit(f"prepare.py: {e}")


if __name__ == "__main__":
    main()
