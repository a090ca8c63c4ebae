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
import errno
import gzip
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import sys
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

from configurator import NanorootsError

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_ROOT = os.path.join(HERE, "data")
SHARED_DATA = os.path.join(os.path.dirname(HERE), "shared", "data")  # the project's public data, next to the checkout


class DataError(NanorootsError):
    """Input or a data folder that cannot be used; the message says what to do."""


def need(module, package, purpose):
    """Import an optional `module` where it is used, so a run that does not need it works without it; or a
    one-line error naming the PyPI `package` to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{purpose} needs the {package} package: pip install {package}") from None


def stable_hash(*parts):
    """A 64-bit hash that is the same in every process and run (Python's hash() is salted)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def in_val_split(doc_index, val_fraction, seed):
    """Deterministic and independent of order of arrival: a document's split depends on its index."""
    return stable_hash(seed, "split", doc_index) / 2**64 < val_fraction


# -----------------------------------------------------------------------------
# crash-safe writes: write a temporary file next to the target, fsync it, then rename it over the target

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # errors only a write gives


def write_error(path, e):
    return DataError(f"could not write {path} ({e.strerror}); free some disk space or choose a folder you can write to: "
                     f"the previous version of the file is untouched")


@contextlib.contextmanager
def atomic_file(path, mode="w"):
    """Open a temporary file next to `path` for writing ("w" text in UTF-8, or "wb"). When the block ends
    without an error it is flushed, fsynced and renamed over `path`; otherwise it is removed. A crash at
    any moment leaves the old file or the new one, whole; a full disk or a folder we may not write in is a
    DataError that names the file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        f = open(tmp, mode, encoding=None if "b" in mode else "utf-8")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise write_error(path, e) from None
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
    if "shards" not in counts:  # shards carry their prepare run's id and a fingerprint each
        meta["run_id"] = bins_run_id(data_dir)
    atomic_write_text(os.path.join(data_dir, "meta.json"), json.dumps(meta, indent=2, ensure_ascii=False))
    return meta


def bins_run_id(data_dir, block=1 << 16, samples=64):
    """
    The id meta.json and the bins it was written with share: a hash of each bin's size and bytes, all of
    them up to samples * block bytes and beyond that `samples` blocks at evenly spaced offsets (first and
    last included), so checking it reads at most 4 MiB a file. Bins of another prepare.py run, even with the
    same token counts, differ from the first changed document on, which the blocks see. Derived from the
    bytes, the id of identical outputs is identical (1 rank and N ranks write the same meta.json).
    """
    h = hashlib.blake2b(digest_size=8)
    for split in ("train", "val"):
        path = os.path.join(data_dir, f"{split}.bin")
        size = os.path.getsize(path)
        h.update(f"{split}:{size};".encode())
        with open(path, "rb") as f:
            step = max(block, (size - block) // max(1, samples - 1))
            for offset in range(0, size, step) if size > samples * block else [0]:
                f.seek(min(offset, max(0, size - block)))
                h.update(f.read(block if size > samples * block else size))
    return h.hexdigest()


def read_meta(data_dir):
    """meta.json of a prepared dataset, the one reader of it."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(data_dir, "train.bin")):
            raise DataError(f"{data_dir} has train.bin but no meta.json: an interrupted prepare.py run left it; "
                            f"run prepare.py again")
        raise DataError(f"{path} not found: prepare the dataset first (python prepare.py {os.path.basename(data_dir)})")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or not isinstance(meta.get("tokenizer"), dict) or "kind" not in meta["tokenizer"]:
            raise ValueError("it has no tokenizer entry with a kind")
        np.dtype(meta.get("dtype", "uint16"))  # a tokenizer-only folder has no bins, hence no dtype or counts
    except (ValueError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise DataError(f"{path} is corrupt ({e}); run prepare.py again") from None
    return meta


def read_tokenizer_spec(data_dir, meta=None):
    """The tokenizer spec a prepared dataset was written with (tokenizer.tokenizer_from_spec builds it)."""
    entry = (meta or read_meta(data_dir))["tokenizer"]
    if "file" not in entry:
        return {"kind": entry["kind"]}
    name = entry["file"]
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise DataError(f"{data_dir}/meta.json names the tokenizer file {name!r}, not a file in that folder; run prepare.py again")
    path = os.path.join(data_dir, name)
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path} is missing; run prepare.py again") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}); run prepare.py again") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path} holds a JSON {type(spec).__name__}, not a tokenizer; run prepare.py again")
    return spec


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
    """The bins hold the token counts meta.json vouches for, and shards the fingerprints it recorded, one-file
    bins its run id (a prepare.py run killed between its renames leaves a mix), and each split has room for a
    training window of block_size + 1 tokens and its shift."""
    missing = [k for k in ("dtype", "train_tokens", "val_tokens") if k not in meta]
    if missing:
        raise DataError(f"{data_dir}/meta.json is corrupt (it lacks {missing}); run prepare.py again")
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
        one_file = "shards" not in meta and "run_id" in meta  # older folders have no run id
        if split == "val" and one_file and bins_run_id(data_dir) != meta["run_id"]:
            raise DataError(f"the bins in {data_dir} are not the ones its meta.json was written with (run id): an "
                            f"interrupted prepare.py run left a mix of old and new files; run prepare.py again")
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
        self._sync()  # first, so that the old bins and their meta.json stay a usable dataset while this flushes
        meta = os.path.join(self.data_dir, "meta.json")
        if os.path.exists(meta):  # it vouched for the old bins: from here until the new one is written, none does
            os.remove(meta)
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


def list_shards(written, max_tokens, data_dir, run_id):
    """meta.json's shard lists, numbered in input order (train-00000.bin, ...), up to the shard that reaches
    max_tokens (0: all); the temporary files of the shards past it are deleted."""
    listed, total = {"train": [], "val": []}, 0
    for index, key in enumerate(sorted(written)):
        if max_tokens and total >= max_tokens:
            for entry in written[key].values():
                os.remove(os.path.join(data_dir, f"{entry['file']}.tmp{run_id}"))
            continue
        for split, entry in written[key].items():
            listed[split].append(entry | {"file": shard_name(split, index), "written": entry["file"]})
            total += entry["tokens"]
    return listed


def concatenate(paths, out_path):
    """Byte-copy files into one (gzip members into one .gz), written atomically; each part is then deleted."""
    with atomic_file(out_path, "wb") as out:
        for path in paths:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    for path in paths:
        os.remove(path)


# -----------------------------------------------------------------------------
# downloads. A file counts as complete only when its length is proven: the Content-Length of a 200, the
# total of a 206's Content-Range, the end of a chunked body, or (for a server that sends none of these) a
# ranged request past the end that the server answers with 416. A `.part` is continued only when the remote
# provably has not changed since it began (If-Range with the ETag or Last-Modified recorded beside it), and
# only from where it ends; anything else starts again from zero. Each cached file has a sidecar
# <file>.download.json recording the URL, size and validators it came from.

class IncompleteDownload(Exception):
    """A transfer that did not deliver a whole file; retried."""


def download_path(url, folder):
    """Where `url` is cached in `folder`: its file name after a hash of the whole URL, so two URLs with the
    same file name (.../en/part-0.json.gz and .../fr/part-0.json.gz) never share a file."""
    name = os.path.basename(url.split("?", 1)[0].split("#", 1)[0]) or "index"
    return os.path.join(folder, f"{stable_hash(url):016x}-{name}")


def remove_download(dest):
    """Delete a downloaded file and the record beside it."""
    _remove(dest, dest + ".download.json")


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


def _read_record(path):
    """A download sidecar, or None when it is missing or unreadable (then nothing it would vouch for is trusted)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _remove(*paths):
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def _is_cached(url, dest, sha256, check):
    """dest is a whole copy of url: its sidecar names url and its size (a file from before sidecars existed
    counts only when sha256 vouches for it), its sha256 matches when known, and `check` finds no problem."""
    if not os.path.exists(dest):
        return False
    record = _read_record(dest + ".download.json")
    problem = None
    if record is None and not sha256:
        problem = "it has no record of where it came from"
    elif record is not None and (record.get("url") != url or record.get("size") != os.path.getsize(dest)):
        problem = "it came from another URL or is not the size recorded"
    elif sha256 and sha256_of(dest) != sha256:
        problem = "its sha256 does not match"
    elif check:
        problem = check(dest)
    if problem:
        print(f"cached {dest} is not usable ({problem}); downloading it again", file=sys.stderr)
    return problem is None


def _content_range(value):
    """(first byte, total) of a Content-Range header `bytes first-last/total`; total is None for `*`."""
    unit, _, rest = (value or "").partition(" ")
    span, _, total = rest.partition("/")
    try:
        return (int(span.split("-")[0]), None if total == "*" else int(total)) if unit == "bytes" else (None, None)
    except ValueError:
        return None, None


def _fetch_once(url, part, timeout, progress, desc, has_sha256):
    """One request: continue the .part (when its record allows) or start it again. Returns the record of a
    whole file; raises IncompleteDownload (or a requests/urllib3 error) when the transfer is cut short. A
    body without a length is proven whole by _confirm_end, or later by its sha256 when one is known."""
    import requests  # downloads only: the rest of the project (sample.py, train.py on local data) skips its 0.05 s
    record = _read_record(part + ".json") or {}
    have = os.path.getsize(part) if os.path.exists(part) else 0
    validator = record.get("etag") or record.get("last_modified")
    headers = {"Accept-Encoding": "identity"}  # the file's own bytes, not a compressed transfer of them
    if have and record.get("url") == url and record.get("size") and validator:
        headers |= {"Range": f"bytes={have}-", "If-Range": validator}
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
        if r.status_code in (404, 403, 401, 410):
            raise DataError(f"HTTP {r.status_code} for {url}: check the URL, or set NANOROOTS_MIRROR to a local copy")
        if r.status_code == 416:  # the .part is as long as the remote or longer: the remote changed; start again
            _remove(part, part + ".json")
            raise IncompleteDownload(f"the server has no bytes past {have} (HTTP 416): starting again from zero")
        r.raise_for_status()
        start, total = _content_range(r.headers.get("Content-Range"))
        etag, modified = r.headers.get("ETag"), r.headers.get("Last-Modified")
        if r.status_code == 206:
            if "Range" not in headers or start != have or total != record["size"] or (etag or modified) != validator:
                _remove(part, part + ".json")
                raise IncompleteDownload(f"the server answered a request for bytes {have}- with {r.headers.get('Content-Range')} "
                                         f"of another version or place: starting again from zero")
        else:  # the whole file: a first request, or the remote changed since the .part began
            have, total = 0, int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
        record = {"url": url, "size": total, "etag": etag, "last_modified": modified,
                  "encoding": r.headers.get("Content-Encoding"), "chunked": "chunked" in r.headers.get("Transfer-Encoding", "")}
        atomic_write_text(part + ".json", json.dumps(record))
        with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                          desc=desc, disable=not progress, leave=False) as bar:
            for block in r.raw.stream(1 << 16, decode_content=False):
                f.write(block)
                bar.update(len(block))
    got = os.path.getsize(part)
    if total is not None and got != total:
        raise IncompleteDownload(f"connection closed at {got} of {total} bytes")
    if total is None and not record["chunked"] and not has_sha256:
        _confirm_end(url, part, record, timeout)
    return record


def _confirm_end(url, part, record, timeout):
    """A body without a length ends when the server closes the connection, which is also how a cut transfer
    ends. Ask for the bytes after it: 416 (none) confirms the end; anything else leaves the file unproven."""
    import requests
    got, validator = os.path.getsize(part), record.get("etag") or record.get("last_modified")
    headers = {"Accept-Encoding": "identity", "Range": f"bytes={got}-"} | ({"If-Range": validator} if validator else {})
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
        status, content_range = r.status_code, r.headers.get("Content-Range")
    if status == 416:
        record["size"] = got
        return
    start, total = _content_range(content_range)
    if status == 206 and start == got and total:
        record["size"] = total  # there is more: the next attempt continues from here
        atomic_write_text(part + ".json", json.dumps(record))
        raise IncompleteDownload(f"the connection closed at {got} of {total} bytes (the server sent no length)")
    raise DataError(f"{url} was sent without a length by a server that does not answer range requests, so a cut "
                    f"transfer cannot be told from a whole one; give its sha256 to check it, or download it yourself")


def _fetch(url, part, retries, timeout, progress, desc, has_sha256):
    """_fetch_once until a whole file arrives, with backoff between tries. Returns its record."""
    import requests
    import urllib3
    for attempt in range(retries + 1):
        try:
            return _fetch_once(url, part, timeout, progress, desc, has_sha256)
        except (requests.RequestException, urllib3.exceptions.HTTPError, IncompleteDownload, OSError) as e:
            if isinstance(e, OSError) and (e.errno in DISK_FULL or e.errno == errno.EACCES):
                raise write_error(part, e) from None
            if attempt == retries:
                raise DataError(f"could not download {url} after {retries + 1} tries ({e}); "
                                f"retry later, or set NANOROOTS_MIRROR to a local copy") from None
            wait = 0 if isinstance(e, IncompleteDownload) and attempt == 0 else min(2 ** attempt, 30)
            print(f"download of {url} failed ({e}); retrying in {wait}s", file=sys.stderr)
            time.sleep(wait)


def _undo_transfer_gzip(part, dest):
    """A server may gzip a file on its way (Content-Encoding: gzip) although we asked for its own bytes.
    Unwrap that layer, unless dest is itself a .gz that the header merely described (then unwrapping would
    leave plain text under a .gz name): a .gz whose unwrapped bytes are gzip again was compressed twice."""
    try:
        with gzip.open(part, "rb") as g:
            inner_is_gzip = g.read(2) == b"\x1f\x8b"
    except (OSError, EOFError):  # not gzip after all: the header was wrong, the bytes are the file
        return
    if dest.endswith(".gz") and not inner_is_gzip:
        return
    with gzip.open(part, "rb") as g, open(part + ".plain", "wb") as out:
        for block in iter(lambda: g.read(1 << 20), b""):
            out.write(block)
    os.replace(part + ".plain", part)


def normalize_sha256(sha256):
    """A sha256 as lower-case hex (as sha256_of writes it), or None; anything else is a one-line error."""
    if not sha256:
        return None
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise DataError(f"sha256={sha256!r} is not 64 hexadecimal digits")
    return value


def download(url, dest, sha256=None, retries=4, timeout=30, progress=True, check=None):
    """
    Fetch `url` to `dest` (see the section comment): stream into dest.part, continue it after a dropped
    connection when the remote has not changed, retry with backoff, check sha256 (any case) when known and
    `check(path)` (a parser that returns a problem or None) when given, then rename. A cached dest is used
    again only when it passes the same checks. Returns dest.
    """
    sha256 = normalize_sha256(sha256)
    if _is_cached(url, dest, sha256, check):
        return dest
    part = dest + ".part"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        mirrored = _mirror_copy(url)
        if mirrored:
            shutil.copyfile(mirrored, part)
            record = {"url": url}
        else:
            record = _fetch(url, part, retries, timeout, progress, os.path.basename(dest), bool(sha256))
            if record.get("encoding") in ("gzip", "x-gzip"):
                _undo_transfer_gzip(part, dest)
    except OSError as e:  # the download folder cannot be written, or is full
        raise write_error(part, e) from None
    got = sha256_of(part) if sha256 else None
    problem = f"sha256 of {url} is {got}, expected {sha256}: the file is corrupt or changed" if got != sha256 else None
    if not problem and check and check(part):
        problem = f"downloaded {url} but {check(part)}"
    if problem:
        _remove(part, part + ".json")
        raise DataError(f"{problem}; deleted it")
    atomic_write_text(dest + ".download.json", json.dumps({**record, "size": os.path.getsize(part)}))
    os.replace(part, dest)
    _remove(part + ".json")
    return dest
