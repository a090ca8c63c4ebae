"""
Boilerplate across documents, the two steps of ROOTS that look at the corpus rather than at one document:
- template lines: a line repeated in many documents is a menu, a footer, a cookie banner ("Jump to navigation Jump to
  search"), so it is deleted wherever it occurs (ROOTS' dedup_template_soft, BigScience catalogue pipeline);
- repeated substrings: any span of at least 50 bytes that already occurred earlier in the corpus is cut, keeping its
  first occurrence (exact-substring dedup, Lee et al. 2022, "Deduplicating Training Data Makes Language Models
  Better", which ROOTS ran with a 50-byte minimum and found 21.7% of bytes duplicated on average).
Both are pure functions over texts; curate.py decides where in the pipeline they run and counts what they remove.
"""

import hashlib

import numpy as np

from dataset import need

TEMPLATE_MIN_CHARS = 15  # dedup_template_soft: only lines of at least 15 characters (after strip) count...
TEMPLATE_MIN_COUNT = 10  # ...and such a line occurring at least 10 times in the dataset is deleted everywhere
SUBSTRING_MIN_BYTES = 50  # Lee et al. 2022 and ROOTS: the shortest repeated span worth removing
SEPARATOR = b"\xff"  # never occurs in UTF-8, so no match can run from one document into the next


def line_key(line):
    """64-bit key of a stripped line (ROOTS hashes each line with MD5; we keep the first 8 bytes)."""
    return int.from_bytes(hashlib.md5(line.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def template_keys(text, min_chars=TEMPLATE_MIN_CHARS):
    """The key of every line long enough to be a template, one per occurrence (every occurrence counts, also two
    in the same document)."""
    return [line_key(s) for s in (line.strip() for line in text.split("\n")) if len(s) >= min_chars]


def remove_template_lines(text, templates, min_chars=TEMPLATE_MIN_CHARS):
    """text without its lines whose key is in `templates`; returns (text, removed lines)."""
    kept, removed = [], []
    for line in text.split("\n"):
        s = line.strip()
        (removed if len(s) >= min_chars and line_key(s) in templates else kept).append(line)
    return "\n".join(kept), removed


def repeated_spans_mask(texts, min_bytes=SUBSTRING_MIN_BYTES):
    """For texts in corpus order, a boolean array over the UTF-8 bytes of "\\xff".join(texts) + "\\xff": True where a
    byte lies in a span of >= min_bytes that occurred earlier (earlier document, or earlier in the same one).
    Such a span of L bytes is the union of its L - min_bytes + 1 windows of exactly min_bytes, each of which occurred
    earlier too, so it is enough to find the windows (inside one document) that also start at an earlier position:
    from a suffix array (pydivsufsort) and its LCP array, without the longest previous factor of every position."""
    suffix_arrays = need("pydivsufsort", "pydivsufsort", "exact-substring dedup (substring_dedup=True)")
    data = np.frombuffer(SEPARATOR.join(t.encode("utf-8", "surrogatepass") for t in texts) + SEPARATOR, np.uint8).copy()
    if len(data) >= 2**31 - 1:
        raise ValueError(f"{len(data):,} bytes is past the suffix array's 2 GiB limit: lower substring_chunk_mb")
    suffixes = suffix_arrays.divsufsort(data)
    same_window = suffix_arrays.kasai(data, suffixes) >= min_bytes  # [r]: ranks r, r + 1 share a window
    starts = later_occurrences(suffixes, same_window)
    # a window may not run past its document's end (a separator is identical in every document)
    ends = np.flatnonzero(data == SEPARATOR[0])
    starts = starts[ends[np.searchsorted(ends, starts)] - starts >= min_bytes]
    cover = np.zeros(len(data), np.int32)
    cover[starts] += 1  # starts are distinct, and so are their ends
    cover[starts + min_bytes] -= 1
    return np.cumsum(cover, dtype=np.int32) > 0, data


def later_occurrences(suffixes, same_window):
    """The positions whose window also starts at an earlier position. The suffixes that begin with one window are
    neighbours in the suffix array: a run of ranks where same_window (the longest common prefix of a suffix and the
    next one, Kasai et al.'s LCP array, is >= the window) holds; every position of a run but the smallest repeats."""
    after = np.concatenate([[False], same_window[:-1]])  # the suffix ranked just before shares the window
    ranks = np.flatnonzero(same_window | after)  # the ranks in a run of two suffixes or more
    first = np.flatnonzero(~after[ranks])  # where each run begins in ranks
    positions = suffixes[ranks]
    earliest = np.repeat(np.minimum.reduceat(positions, first), np.diff(np.append(first, len(ranks))))
    return positions[positions != earliest]


def remove_repeated_substrings(texts, min_bytes=SUBSTRING_MIN_BYTES):
    """Each text without the spans of >= min_bytes that repeat an earlier occurrence, cut at character boundaries
    (a character goes only when all its bytes are covered). Returns (texts, removed bytes per text, one removed
    span per text or '')."""
    if not texts:
        return [], [], []
    covered, data = repeated_spans_mask(texts, min_bytes)
    lead = np.flatnonzero((data & 0xC0) != 0x80)  # first byte of every character
    char_gone = np.minimum.reduceat(covered, lead)
    gone = np.repeat(char_gone, np.diff(np.append(lead, len(data))))  # never a separator: no window covers one
    ends = np.flatnonzero(data == SEPARATOR[0])
    starts = np.append(0, ends[:-1] + 1)
    removed = np.add.reduceat(gone, starts, dtype=np.int64)
    out, examples = list(texts), [""] * len(texts)
    for i in np.flatnonzero(removed):  # only the texts that lose bytes are cut and decoded again
        text_gone = gone[starts[i]:ends[i]]
        out[i] = data[starts[i]:ends[i]][~text_gone].tobytes().decode("utf-8", "surrogatepass")
        first = int(np.argmax(text_gone))  # the first removed run, as an example for the report
        run = int(np.argmin(np.append(text_gone[first:], False)))
        examples[i] = data[starts[i] + first:starts[i] + first + run].tobytes().decode("utf-8", "replace")
    return out, removed.tolist(), examples
