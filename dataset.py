"""
The data/<name>/ folder that prepare.py writes and train.py and finetune.py read, and the I/O every
stage shares to read and write files safely.

    data/<name>/train.bin, val.bin   token ids, uint16 (uint32 for vocabularies over 65,536), documents
                                     separated by <|endoftext|>; read with np.memmap
    data/<name>/train-00000.bin ...  or the same split into shards (prepare.py's ranks each write their own);
    data/<name>/val-00000.bin ...    read as one stream in shard order, the same tokens as one file would hold
    data/<name>/meta.json            tokenizer entry, dtype, token and document counts, source, input stats, and
                                     for shards each file's tokens and fingerprint and the run id; renamed into
                                     place last, so it vouches for the bins beside it
    data/<name>/tokenizer.json       a learned vocabulary (char, bpe), named by meta.json

Also here: stable hashes and the train/val split rule, `atomic_file` (every crash-safe write goes through
it), downloads with resume, retries, a local mirror and sha256 checks, and DataError.
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import sys
import time
from collections import Counter

import numpy as np
import requests
from tqdm import tqdm

from configurator import NanorootsError

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_ROOT = os.path.join(HERE, "data")
SHARED_DATA = os.path.join(os.path.dirname(HERE), "shared", "data")  # the project's public data, next to the checkout


class DataError(NanorootsError):
    """Input or a data folder that cannot be used; the message says what to do."""


def stable_hash(*parts):
    """A 64-bit hash that is the same in every process and run (Python's hash() is salted)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def in_val_split(doc_index, val_fraction, seed):
    """Deterministic and independent of order of arrival: a document's split depends on its index."""
    return stable_hash(seed, "split", doc_index) / 2**64 < val_fraction


# -----------------------------------------------------------------------------
# crash-safe writes: write a temporary file next to the target, fsync it, then rename it over the target

@contextlib.contextmanager
def atomic_file(path, mode="w"):
    """Open a temporary file next to `path` for writing ("w" text in UTF-8, or "wb"). When the block ends
    without an error it is flushed, fsynced and renamed over `path`; otherwise it is removed. A crash at
    any moment leaves the old file or the new one, whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    with atomic_file(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_gzip_text(path):
    """atomic_file for a gzipped text file. The gzip header holds no name and no time, so the same content
    gives the same bytes."""
    with atomic_file(path, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as packed:
        with io.TextIOWrapper(packed, encoding="utf-8") as text:
            yield text


# -----------------------------------------------------------------------------
# the data folder: meta.json and the bins

def dataset_dir(dataset, data_root=DATA_ROOT):
    """data_root/<dataset>, or `dataset` itself when it is a folder path and no such name is prepared."""
    under_root = os.path.join(data_root, dataset)
    return dataset if os.path.isdir(dataset) and not os.path.isdir(under_root) else under_root


def write_meta(data_dir, tok, counts, source, stats):
    """meta.json (and tokenizer.json for learned vocabularies), each written atomically, meta.json last."""
    entry = {"kind": tok.kind, "vocab_size": tok.vocab_size, "special_ids": tok.special_ids}
    spec = tok.spec()
    if len(spec) > 1:  # a learned vocabulary is data: it gets its own file, which meta.json names
        atomic_write_text(os.path.join(data_dir, "tokenizer.json"), json.dumps(spec, ensure_ascii=False, separators=(",", ":")))
        entry["file"] = "tokenizer.json"
    meta = {"tokenizer": entry, "vocab_size": tok.vocab_size, **counts, "source": source, "input_stats": dict(stats)}
    atomic_write_text(os.path.join(data_dir, "meta.json"), json.dumps(meta, indent=2, ensure_ascii=False))
    return meta


def read_meta(data_dir):
    """meta.json of a prepared dataset, the one reader of it."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        raise DataError(f"{path} not found: prepare the dataset first (python prepare.py {os.path.basename(data_dir)})")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_tokenizer_spec(data_dir, meta=None):
    """The tokenizer spec a prepared dataset was written with (tokenizer.tokenizer_from_spec builds it)."""
    entry = (meta or read_meta(data_dir))["tokenizer"]
    if "file" not in entry:
        return {"kind": entry["kind"]}
    with open(os.path.join(data_dir, entry["file"]), encoding="utf-8") as f:
        return json.load(f)


def bin_files(meta, split):
    """[(file name, tokens, fingerprint or None)] of one split, in stream order: the shards meta.json lists, or
    the one file `<split>.bin` of a dataset written before shards (and by prepare.py without curation)."""
    if "shards" not in meta:
        return [(f"{split}.bin", meta[f"{split}_tokens"], None)]
    return [(s["file"], s["tokens"], s["fingerprint"]) for s in meta["shards"][split]]


class TokenShards:
    """Several token files read as one stream: len() and [i:j] slices that may cross a shard boundary, so
    sampling from shards is sampling from their concatenation. Each shard is memory-mapped when first touched."""

    def __init__(self, paths, counts, dtype):
        self.paths, self.dtype = paths, np.dtype(dtype)
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.maps = {}

    def __len__(self):
        return int(self.starts[-1])

    def shard(self, k):
        if k not in self.maps:
            self.maps[k] = np.memmap(self.paths[k], dtype=self.dtype, mode="r")
        return self.maps[k]

    def __getitem__(self, index):
        if not isinstance(index, slice):
            i = int(index) + (len(self) if index < 0 else 0)
            return self[i:i + 1][0]
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("TokenShards slices take a step of 1")
        pieces = []
        k = int(np.searchsorted(self.starts, start, side="right")) - 1  # the shard holding `start`
        while start < stop:
            end = min(stop, int(self.starts[k + 1]))
            pieces.append(self.shard(k)[start - self.starts[k]:end - self.starts[k]])
            start, k = end, k + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces or [np.zeros(0, self.dtype)])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


def read_bin(data_dir, split, meta):
    """The token ids of one split: a read-only memmap of `<split>.bin`, or TokenShards over its shards."""
    files = bin_files(meta, split)
    paths = [os.path.join(data_dir, name) for name, _, _ in files]
    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"{path} not found: prepare the dataset first (python prepare.py ...)")
    # a new memmap per batch avoids the memory leak of a long-lived one (nanoGPT's note)
    if "shards" not in meta:
        return np.memmap(paths[0], dtype=np.dtype(meta["dtype"]), mode="r")
    return TokenShards(paths, [n for _, n, _ in files], meta["dtype"])


FINGERPRINT_BYTES = 4096


def fingerprint(path):
    """A hash of the file's size and its last 4 KiB: tells a shard from another run's file of the same length
    at the cost of one small read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - FINGERPRINT_BYTES))
        tail = f.read()
    return hashlib.blake2b(size.to_bytes(8, "little") + tail, digest_size=8).hexdigest()


def check_bins(data_dir, meta, block_size=0):
    """The bins hold the token counts meta.json vouches for, and shards the fingerprints it recorded (a
    prepare.py run killed between its renames leaves a mix), and each split has room for a training window of
    block_size + 1 tokens and its shift."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val"):
        n = 0
        for name, tokens, print_ in bin_files(meta, split):
            path = os.path.join(data_dir, name)
            if not os.path.exists(path):
                raise DataError(f"{path} not found: prepare the dataset first (python prepare.py ...)")
            have = os.path.getsize(path) // itemsize
            if have != tokens or (print_ is not None and fingerprint(path) != print_):
                what = f"has {have} tokens but meta.json says {tokens}" if have != tokens else "is not the file meta.json lists"
                raise DataError(f"{path} {what}: an interrupted prepare.py run left a mix of old and new files; "
                                f"run prepare.py again")
            n += have
        if n < block_size + 2:
            raise DataError(f"the {split} split of {data_dir} has {n} tokens, fewer than block_size+2={block_size + 2}; "
                            f"lower block_size or prepare more data")


def token_dtype(vocab_size):
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_name(split, index):
    """train-00042.bin for shard 42; a label (str) names a shard that is renumbered when committed."""
    return f"{split}-{index:05d}.bin" if isinstance(index, int) else f"{split}-{index}.bin"


class BinWriter:
    """Appends token arrays to train.bin/val.bin (or, given a shard index, train-NNNNN.bin/val-NNNNN.bin) under
    temporary names; `commit` renames them. A shard's writer `close`s instead and leaves the renaming to
    `commit_shards`, once every rank has written its own."""

    def __init__(self, data_dir, vocab_size, shard=None, run_id=None):
        self.data_dir = data_dir
        self.dtype = token_dtype(vocab_size).type
        self.names = {s: f"{s}.bin" if shard is None else shard_name(s, shard) for s in ("train", "val")}
        self.tmp = {s: os.path.join(data_dir, f"{name}.tmp{run_id or os.getpid()}") for s, name in self.names.items()}
        self.files = {s: open(p, "wb") for s, p in self.tmp.items()}
        self.tokens = Counter()
        self.docs = Counter()

    def write(self, split, ids):
        arr = np.asarray(ids, dtype=self.dtype)
        try:
            self.files[split].write(arr.tobytes())
        except OSError as e:
            self.abort()
            raise DataError(f"could not write {split}.bin in {self.data_dir} ({e.strerror}); "
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

    def counts(self):
        """What meta.json records of the bins."""
        return {"dtype": np.dtype(self.dtype).name, "train_tokens": self.tokens["train"], "val_tokens": self.tokens["val"],
                "train_docs": self.docs["train"], "val_docs": self.docs["val"]}

    def commit(self):
        self._sync()
        for split in self.files:
            os.replace(self.tmp[split], os.path.join(self.data_dir, self.names[split]))

    def close(self):
        """A shard's files, flushed to disk under their temporary names: {split: meta.json's entry} for the
        splits that got tokens (an empty one is removed)."""
        self._sync()
        entries = {}
        for split, tmp in self.tmp.items():
            if self.tokens[split]:
                entries[split] = {"file": self.names[split], "tokens": self.tokens[split], "docs": self.docs[split],
                                  "fingerprint": fingerprint(tmp)}
            else:
                os.remove(tmp)
        return entries

    def _sync(self):
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def abort(self):
        for split, f in self.files.items():
            f.close()
            if os.path.exists(self.tmp[split]):
                os.remove(self.tmp[split])


def commit_shards(data_dir, shards, run_id):
    """Rename every rank's closed shards ({split: [entry]}) from their temporary names into place: to
    entry["file"], from the name it was written under (entry["written"], when it is renumbered)."""
    for entries in shards.values():
        for entry in entries:
            written = entry.pop("written", entry["file"])
            os.replace(os.path.join(data_dir, f"{written}.tmp{run_id}"), os.path.join(data_dir, entry["file"]))


BIN_NAME = re.compile(r"(train|val)(-\d{5})?\.bin")


def remove_stale_bins(data_dir, meta):
    """After meta.json is renamed into place: delete the bins of earlier runs that it does not list (a one-file
    dataset's train.bin once shards replace it, shards a smaller corpus no longer has)."""
    listed = {name for split in ("train", "val") for name, _, _ in bin_files(meta, split)}
    for name in os.listdir(data_dir):
        if BIN_NAME.fullmatch(name) and name not in listed:
            os.remove(os.path.join(data_dir, name))


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
