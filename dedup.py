"""
Duplicates: the keys of one document (exact: ROOTS' catalogue dedup_document; near: MinHash LSH with datatrove's
defaults), and corpus-wide decisions across torchrun ranks, taken from those keys alone, with memory that shrinks
as ranks are added (curate.py makes each document's keys; prepare.py calls `decide_duplicates` between its two
passes; `find_duplicates` is the same decision in memory).

    pass 1, every rank:  (band, key, doc) records of its own documents -> a key file on disk (KeyWriter)
    exchange:            all-to-all over Gloo, so rank r receives every key of the r-th range of key space
    owner:               sorts what it owns; past `memory_mb` it spills sorted runs to disk and merges them
    collisions:          exact: every copy but the lowest document index, sent back to the rank that owns it
                         near:  candidate pairs (the group's lowest document, another member), sent to rank 0
    rank 0:              union-find over the pairs -> clusters, each kept at its lowest index -> back to owners

No text crosses ranks, and a rank holds O(documents / ranks) records at most (less past the memory budget).
The same machinery serves any corpus-level stage whose decision is a function of equal keys (see the README).
Every collective falls back to plain code in one process, so one rank runs the same path as many.
"""

import datetime
import functools
import hashlib
import json
import os
import re

import numpy as np
import torch
import torch.distributed as dist

from dataset import stable_hash

# one record per key: exact-dedup keys use band -1, MinHash LSH bands 0..bands-1; key is a signed 64-bit hash
RECORD = np.dtype([("band", "<i8"), ("key", "<i8"), ("doc", "<i8")])
EXACT = -1
DOC_BASE = 10**12  # a document's index: its source's place in the input * 10**12 + its place in that source
DIGITS = re.compile(r"\d")

# -----------------------------------------------------------------------------
# deduplication: exact (ROOTS catalogue dedup_document) and MinHash LSH near-duplicates (datatrove's defaults)

EXACT_IGNORED = re.compile(r"[\s\d!-/:-@\[-`{-~]")  # whitespace, digits, ASCII punctuation


@functools.cache
def char_table(pattern):
    """By code point: whether the one-character regex `pattern` matches it (Python's own \\s, \\d, ...)."""
    every = np.arange(0x110000, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")  # no per-char objects
    table = np.zeros(0x110000, dtype=bool)
    table[[m.start() for m in pattern.finditer(every)]] = True
    return table


def code_points(text):
    """The text as a uint32 array of its code points (lone surrogates included), read-only."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def exact_dedup_key(text):
    """Signed 64-bit key of the text without whitespace, digits and ASCII punctuation: ROOTS hashed that string
    with MD5 (first copy wins); we keep MD5's first 8 bytes."""
    cp = code_points(text)
    kept = cp[~char_table(EXACT_IGNORED)[cp]].tobytes().decode("utf-32-le", "surrogatepass")
    digest = hashlib.md5(kept.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


SHINGLE = 5  # datatrove MinhashConfig n_grams
WORD_CHAR = re.compile(r"\w")


def simplified_code_points(text):
    """datatrove's simplification as code points: lower case, digits -> 0; and which of them are word characters
    (Python's \\w), so runs of those are the words of re.findall(r"\\w+", DIGITS.sub("0", text.lower()))."""
    cp = code_points(text.lower()).copy()
    cp[char_table(DIGITS)[cp]] = ord("0")
    return cp.astype(np.uint64), char_table(WORD_CHAR)[cp]


def mix64(x):
    """splitmix64's finaliser: spreads every input bit over the 64 output bits (x: uint64 array)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


WORD_BASE = 0x100000001B3  # FNV-1's 64-bit prime: odd, so it has an inverse modulo 2^64
# powers of WORD_BASE kept between calls (16 MB; word_hashes 1.8x as fast); a longer text computes its own
POWERS_KEPT = 1 << 20


@functools.cache
def base_powers(n):
    """(WORD_BASE^i, WORD_BASE^-i) mod 2^64 for i < n, as uint64 arrays."""
    powers = np.full(n, WORD_BASE, dtype=np.uint64)
    inverses = np.full(n, pow(WORD_BASE, -1, 2**64), dtype=np.uint64)
    powers[0] = inverses[0] = 1
    return np.cumprod(powers), np.cumprod(inverses)


def word_hashes(cp, starts, ends):
    """64-bit hash of each word cp[a:b]: mix64 of sum(cp[i] * WORD_BASE^(i-a)) mod 2^64, for all words at once from
    the prefix sums of cp[i] * WORD_BASE^i (uint64 arithmetic wraps modulo 2^64, and WORD_BASE^-a undoes the offset)."""
    powers, inverses = base_powers(POWERS_KEPT) if len(cp) < POWERS_KEPT else base_powers.__wrapped__(len(cp) + 1)
    prefix = np.zeros(len(cp) + 1, dtype=np.uint64)
    np.cumsum(cp * powers[:len(cp)], out=prefix[1:])
    return mix64((prefix[ends] - prefix[starts]) * inverses[starts])


def shingle_hashes(text, unspaced=False):
    """Distinct 32-bit hashes of the word 5-grams (character 5-grams for languages written without spaces),
    after datatrove's simplification: lower case, digits -> 0, punctuation and symbols separate words."""
    cp, is_word = simplified_code_points(text)
    if unspaced:
        units = cp[is_word]
    else:
        edges = np.flatnonzero(np.diff(np.concatenate(([False], is_word, [False]))))
        units = word_hashes(cp, edges[::2], edges[1::2])
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
    if not len(hashes):
        return np.full(num_perm, 2**32, dtype=np.uint64)
    low = np.full(num_perm, 2**64 - 1, dtype=np.uint64)
    for i in range(0, len(hashes), 4096):  # (num_perm, 4096) at a time keeps memory flat for long documents
        values = np.multiply.outer(a, hashes[i:i + 4096])
        values += b[:, None]
        np.minimum(low, values.min(axis=1), out=low)
    return low >> np.uint64(32)  # the shift keeps order: the minimum's top bits are the top bits' minimum


def band_hashes(signature, bands, rows):
    """One signed 64-bit hash per LSH band of `rows` signature values: two documents are near-duplicate
    candidates when any band agrees. 14 bands x 8 rows (datatrove) flag Jaccard ~ (1/14)^(1/8) = 0.72 and up."""
    values = signature.astype("<u8")
    return [int.from_bytes(hashlib.blake2b(values[i * rows:(i + 1) * rows].tobytes(), digest_size=8).digest(),
                           "little", signed=True) for i in range(bands)]

# -----------------------------------------------------------------------------
# collectives that are plain code in one process


def init_distributed():
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) joins a Gloo group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    # ranks wait for the slowest one at each exchange; a day's timeout lets big, unevenly split corpora finish
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    return dist.get_rank(), dist.get_world_size()


def distributed():
    return dist.is_available() and dist.is_initialized()


def all_gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (small Python objects: counts, tallies)."""
    if not distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather(obj):
    """Every rank's obj, as a list on rank 0; None elsewhere."""
    if not distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj):
    """Rank 0's obj on every rank."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if distributed():
        dist.barrier()


def all_to_all(records, dest, world):
    """Send records[i] to rank dest[i]; returns the records every rank sent here, in rank order."""
    if world == 1:
        return records
    order = np.argsort(dest, kind="stable")
    send = np.ascontiguousarray(records[order]).view(np.int64)
    width = records.dtype.itemsize // 8
    counts = torch.from_numpy(np.bincount(dest, minlength=world).astype(np.int64))
    got = torch.empty(world, dtype=torch.int64)
    dist.all_to_all_single(got, counts)  # first how many, then the records themselves
    out = torch.empty(int(got.sum()) * width, dtype=torch.int64)
    dist.all_to_all_single(out, torch.from_numpy(send), output_split_sizes=(got * width).tolist(),
                           input_split_sizes=(counts * width).tolist())
    return out.numpy().view(records.dtype)


def key_owner(keys, world):
    """The rank that owns each key: rank r owns the r-th of `world` equal ranges of the 64-bit key space."""
    high = (keys.view(np.uint64) >> np.uint64(32)).astype(np.uint64)
    return ((high * np.uint64(world)) >> np.uint64(32)).astype(np.int64)


# -----------------------------------------------------------------------------
# keys on disk: written while curating, read back in blocks

class KeyWriter:
    """Appends (band, key, doc) records to a file a block at a time, so pass 1 holds none of them."""

    def __init__(self, path, block=1 << 16):
        self.path, self.block, self.count = path, block, 0
        self.file = open(path, "wb")
        self.buffer = []

    def add(self, doc, key, band=EXACT):
        self.buffer.append((band, key, doc))
        if len(self.buffer) >= self.block:
            self.flush()

    def add_bands(self, doc, bands):
        self.buffer.extend((b, key, doc) for b, key in enumerate(bands))
        if len(self.buffer) >= self.block:
            self.flush()

    def flush(self):
        np.array(self.buffer, dtype=RECORD).tofile(self.file)
        self.count += len(self.buffer)
        self.buffer = []

    def close(self):
        self.flush()
        self.file.close()
        return self.path


def read_blocks(path, block):
    """The records of a key file or sorted run, `block` at a time."""
    with open(path, "rb") as f:
        while True:
            records = np.fromfile(f, dtype=RECORD, count=block)
            if not len(records):
                return
            yield records


def sort_records(records):
    return records[np.lexsort((records["doc"], records["key"], records["band"]))]


def before(records, band, key):
    """Mask of the records whose (band, key) sorts before (band, key)."""
    return (records["band"] < band) | ((records["band"] == band) & (records["key"] < key))


def merge_runs(paths, block):
    """Sorted runs on disk -> one sorted stream, as blocks in which every (band, key) group is whole. Each step
    yields every buffered record that sorts before the smallest last-buffered key of the runs not yet read to the
    end (nothing smaller can still come), then reads on in the runs that set that bound."""
    readers = [read_blocks(p, block) for p in paths]
    buffers = [next(r, RECORD_NONE) for r in readers]
    live = [len(b) > 0 for b in buffers]
    while True:
        bounded = [i for i in range(len(readers)) if live[i]]
        if not bounded:
            rest = np.concatenate(buffers)
            if len(rest):
                yield sort_records(rest)
            return
        bound = min((int(buffers[i]["band"][-1]), int(buffers[i]["key"][-1])) for i in bounded)
        ready = [before(b, *bound) for b in buffers]
        out = np.concatenate([b[m] for b, m in zip(buffers, ready)])
        buffers = [b[~m] for b, m in zip(buffers, ready)]
        if len(out):
            yield sort_records(out)
        for i in bounded:  # the runs whose buffer ends at the bound read on
            if (int(buffers[i]["band"][-1]), int(buffers[i]["key"][-1])) == bound:
                more = next(readers[i], RECORD_NONE)
                live[i] = len(more) > 0
                buffers[i] = np.concatenate([buffers[i], more])


RECORD_NONE = np.zeros(0, dtype=RECORD)


def exchange(path, world, memory_records, spill_prefix, keep=None):
    """
    Send this rank's records (a key file) to their owners and return what this rank owns as sorted blocks,
    each holding whole (band, key) groups. `keep(records)` -> mask drops records before they are sent. The
    records arrive in rounds (every rank takes part in as many as the busiest needs); whatever exceeds half the
    memory budget is sorted and spilled to `<spill_prefix>-<k>.bin`, and the runs are merged at the end.
    """
    per_round = max(16, memory_records // 4)  # keys are hashes: each rank receives about what it sends
    with open(path, "rb") as f:
        n = os.fstat(f.fileno()).st_size // RECORD.itemsize
    rounds = max(all_gather(-(-n // per_round)))
    held, runs = [], []
    blocks = read_blocks(path, per_round)
    for _ in range(rounds):
        records = next(blocks, RECORD_NONE)
        if keep is not None:
            records = records[keep(records)]
        held.append(all_to_all(records, key_owner(records["key"], world), world))
        if sum(map(len, held)) >= memory_records // 2:
            runs.append(f"{spill_prefix}-{len(runs)}.bin")
            sort_records(np.concatenate(held)).tofile(runs[-1])
            held = []
    owned = sort_records(np.concatenate(held or [RECORD_NONE]))
    if not runs:
        return [owned]
    runs.append(f"{spill_prefix}-{len(runs)}.bin")
    owned.tofile(runs[-1])
    return merge_runs(runs, max(16, memory_records // (2 * len(runs))))


def collisions(blocks):
    """(first, doc) arrays: every record whose (band, key) an earlier record of its sorted group has, with the
    group's first (lowest) document."""
    firsts, docs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for b in blocks:
        new = np.ones(len(b), dtype=bool)
        new[1:] = (b["band"][1:] != b["band"][:-1]) | (b["key"][1:] != b["key"][:-1])
        first = b["doc"][np.flatnonzero(new)][np.cumsum(new) - 1]
        firsts.append(first[~new])
        docs.append(b["doc"][~new])
    return np.concatenate(firsts), np.concatenate(docs)


# -----------------------------------------------------------------------------
# clusters: union-find over candidate pairs, vectorised

def components(a, b):
    """Connected components of the graph with edges a[i] - b[i]: (nodes, root of each node), where a root is
    its component's lowest document. Min-label propagation with pointer jumping (each round a node takes the
    lowest label among its edges, then its label's label); labels only fall, so it stops."""
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    u, v = inverse[:len(a)], inverse[len(a):]
    label = np.arange(len(nodes))  # nodes are sorted: the lowest index is the lowest document
    while True:
        low = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        new = new[new]
        if np.array_equal(new, label):
            return nodes, nodes[label]
        label = new


def largest_clusters(nodes, roots, top=None):
    """Clusters as [root, other members ascending], largest first (then by root); the `top` first, or all."""
    if not len(nodes):
        return []
    order = np.lexsort((nodes, roots))
    nodes, roots = nodes[order], roots[order]
    starts = np.flatnonzero(np.r_[True, roots[1:] != roots[:-1]])
    sizes = np.diff(np.r_[starts, len(roots)])
    chosen = np.lexsort((roots[starts], -sizes))[:top]
    return [nodes[starts[c]:starts[c] + sizes[c]].tolist() for c in chosen]  # the root is the lowest member


# -----------------------------------------------------------------------------
# the decision

def route_drops(doc, kept, reason, doc_owner, world):
    """Records (reason, kept doc, doc) sent to the ranks that own `doc`."""
    records = np.empty(len(doc), dtype=RECORD)
    records["band"], records["key"], records["doc"] = reason, kept, doc
    return all_to_all(records, doc_owner(doc), world)


EXACT_DUP, NEAR_DUP = 0, 1
REASONS = {EXACT_DUP: "exact_dup", NEAR_DUP: "near_dup"}


def decide_duplicates(exact_path, near_path, doc_owner, rank, world, memory_mb, scratch, top=5):
    """
    Every rank calls this with its own key files (either may be None when that dedup is off) and
    doc_owner(docs) -> the rank that holds each document. Returns (drops, clusters): drops is this rank's
    duplicates as a sorted record array (band = EXACT_DUP or NEAR_DUP, key = the document kept, doc); on rank 0
    clusters is (number of near-duplicate clusters, the `top` largest), elsewhere None. The first copy in input
    order wins, exact duplicates are removed before near ones are looked for: what find_duplicates decides.
    """
    memory_records = max(64, int(memory_mb * 2**20) // RECORD.itemsize)
    spill = os.path.join(scratch, f"run-{rank}")
    drops = [RECORD_NONE]
    if exact_path:
        first, doc = collisions(exchange(exact_path, world, memory_records, spill + "-exact"))
        drops.append(route_drops(doc, first, EXACT_DUP, doc_owner, world))
    exact_drops = np.sort(drops[-1]["doc"])
    clusters = (0, []) if rank == 0 else None
    if near_path:
        alive = lambda records: ~np.isin(records["doc"], exact_drops, assume_unique=False)  # noqa: E731
        first, doc = collisions(exchange(near_path, world, memory_records, spill + "-near", keep=alive))
        pairs = np.unique(np.stack([first, doc], axis=1), axis=0) if len(doc) else np.zeros((0, 2), np.int64)
        everyone = gather(pairs)  # only the candidate pairs travel on
        if rank == 0:
            pairs = np.concatenate(everyone)
            nodes, roots = components(pairs[:, 0], pairs[:, 1])
            clusters = (int(np.sum(nodes == roots)), largest_clusters(nodes, roots, top))
            dropped = nodes != roots
            near = (nodes[dropped], roots[dropped])
        else:
            near = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        drops.append(route_drops(*near, NEAR_DUP, doc_owner, world))
    drops = np.concatenate(drops)
    return drops[np.argsort(drops["doc"], kind="stable")], clusters


def find_duplicates(exact, near):
    """
    Duplicates over a corpus held in memory (one process): what dedup.decide_duplicates decides across ranks.
    exact: (docs, keys) int64 arrays; near: (docs, bands) arrays, bands of shape (len(docs), n_bands). Returns
    ({doc: (reason, kept doc)}, near-duplicate clusters as sorted lists, largest first). The first copy wins:
    exact copies keep the lowest index; near-duplicate clusters are unions (union-find) of documents that share
    a band, among those exact dedup kept, and keep their lowest index.
    """
    records = np.zeros(len(exact[0]), dtype=RECORD)
    records["band"], records["key"], records["doc"] = EXACT, exact[1], exact[0]
    first, docs = collisions([sort_records(records)])
    drop = {doc: ("exact_dup", kept) for doc, kept in zip(docs.tolist(), first.tolist())}
    near_docs, bands = near
    alive = ~np.isin(near_docs, docs)
    records = np.zeros(bands[alive].size, dtype=RECORD)
    records["band"] = np.tile(np.arange(bands.shape[1]), int(alive.sum()))
    records["key"], records["doc"] = bands[alive].reshape(-1), np.repeat(near_docs[alive], bands.shape[1])
    first, docs = collisions([sort_records(records)])
    nodes, roots = components(first, docs)
    drop |= {doc: ("near_dup", root) for doc, root in zip(nodes.tolist(), roots.tolist()) if doc != root}
    return drop, largest_clusters(nodes, roots)


class Cursor:
    """A stream sorted by document index, read shard by shard: upto(end) yields the items before document `end`."""

    def __init__(self, items, doc):
        self.items, self.doc = iter(items), doc
        self.head = next(self.items, None)

    def upto(self, end):
        while self.head is not None and self.doc(self.head) < end:
            item, self.head = self.head, next(self.items, None)
            yield item


def staged_records(path, drops):
    """(record, (reason, kept doc) or None) for each staged survivor of pass 1 in `path`, in index order;
    drops: this rank's duplicates (dedup.decide_duplicates)."""
    docs = drops["doc"]
    with open(path, encoding="utf-8") as f:
        for record in map(json.loads, f):
            k = np.searchsorted(docs, record["i"])
            found = k < len(docs) and docs[k] == record["i"]
            yield record, (REASONS[int(drops["band"][k])], int(drops["key"][k])) if found else None


def document_owner(shards, world, by_source):
    """docs -> the rank that curated each: the owner of its source, or of its shard (every rank saw them all)."""
    if by_source:
        return lambda docs: (docs // DOC_BASE) % world
    firsts, owners = np.array([s[2] for s in shards], dtype=np.int64), np.array([s[3] for s in shards], dtype=np.int64)
    return lambda docs: owners[np.searchsorted(firsts, docs, side="right") - 1]
