"""
py3langid's language ranking (langid.py, Lui & Baldwin 2012) with its byte automaton read by array operations.

py3langid counts byte n-gram features by walking an Aho-Corasick automaton one byte at a time in a Python loop,
which is most of its cost. The automaton's state after a byte is the longest suffix of the text so far that is a
node of its trie, so it depends only on the last `depth` bytes (the trie's depth, 6 for the shipped model). Here
the state after every byte comes from walking those few preceding bytes from the root, for all positions at
once, and the naive Bayes scores are py3langid's own arithmetic: the ranking is the same, 2-3.5x faster.
"""

import math
import unicodedata

import numpy as np

# (nextmove entries, states) of a model whose trie depth is known, so loading skips the 0.5 s breadth-first search:
# py3langid's shipped model (tests/test_curation.py checks its depth against trie_depth)
KNOWN_DEPTHS = {(9816576, 104583): 6}


def trie_depth(nextmove, rowbase):
    """The largest number of bytes from the root to a state (breadth-first): the length of the longest suffix the
    automaton remembers."""
    depth = np.full(len(rowbase), -1, dtype=np.int16)
    depth[0], frontier, d = 0, np.array([0]), 0
    while len(frontier):
        d += 1
        reached = np.zeros(len(depth), dtype=bool)
        reached[nextmove[(rowbase[frontier][:, None] + np.arange(256)).ravel()]] = True
        frontier = np.flatnonzero(reached & (depth < 0))
        depth[frontier] = d
    return int(depth.max())


class ArrayLangid:
    """rank(text) of a py3langid LanguageIdentifier built with norm_probs=True, computed with array operations;
    best(text) with `aliases` ({label: the label it counts as}) merged."""

    def __init__(self, identifier, aliases=None):
        self.nextmove = np.frombuffer(identifier.tk_nextmove, dtype=np.uint32)
        self.rowbase = np.asarray(identifier.tk_row, dtype=np.int64) << 8
        self.output = np.asarray(identifier.tk_output, dtype=np.int64)
        shape = (len(self.nextmove), len(self.rowbase))
        self.depth = KNOWN_DEPTHS.get(shape) or trie_depth(self.nextmove, self.rowbase)
        # float32 rather than the model's float16: numpy converts float16 slowly, and gathers sorted rows fastest
        self.nb_ptc, self.nb_pc = identifier.nb_ptc.astype(np.float32), identifier.nb_pc
        self.classes, self.alias_pairs = identifier.nb_classes, identifier._alias_pairs
        merged = [(aliases or {}).get(label, label) for label in self.classes]
        self.merged_labels = list(dict.fromkeys(merged))
        self.column_label = np.array([self.merged_labels.index(label) for label in merged])
        self.first = np.full(len(self.nb_ptc), np.iinfo(np.int64).max)  # scratch of first_occurrences, kept all-max

    def first_occurrences(self, found):
        """(the features of `found` in the order they first occur, how often each occurs), without sorting: each
        feature's first position lands in a per-feature scratch array, reset afterwards."""
        positions = np.arange(len(found))
        np.minimum.at(self.first, found, positions)
        ids = found[self.first[found] == positions]
        self.first[ids] = np.iinfo(np.int64).max
        return ids, np.bincount(found, minlength=len(self.first))[ids]

    def features(self, data):
        """The feature of the state after each byte of `data` (bytes), -1 where the state has none."""
        a = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        state = np.zeros(len(a), dtype=np.int64)
        for back in range(min(self.depth, len(a)) - 1, -1, -1):  # position i reads byte i - back (none before 0)
            state[back:] = self.nextmove[self.rowbase[state[back:]] + a[:len(a) - back]]
        return self.output[state]

    def probabilities(self, text):
        """py3langid's probability per column of its model, a label's second column folded into its first."""
        if text.isupper():
            text = text.lower()
        data = unicodedata.normalize("NFC", text).encode("utf-8", errors="surrogatepass")
        found = self.features(data)
        found = found[found >= 0]
        if len(found):  # py3langid sums the features in the order they first occur
            ids, counts = self.first_occurrences(found)
            scores = np.log1p(counts.astype(np.float32)) @ self.nb_ptc[ids] + self.nb_pc
        else:  # no feature: every language equally likely
            scores = np.zeros(len(self.classes), dtype=np.float32)
        scores *= 1.0 / math.sqrt(len(data) or 1)  # py3langid's calibration by length
        np.exp(scores - scores.max(), out=scores)
        scores /= scores.sum()
        for i, j in self.alias_pairs:  # a label with two columns (scripts) gets their sum in its first
            scores[i] += scores[j]
            scores[j] = 0.0
        return scores

    def rank(self, text):
        """[(label, probability)] for every label, best first: py3langid's rank(text)."""
        merged = {}
        for label, score in zip(self.classes, self.probabilities(text).tolist()):
            merged.setdefault(label, score)
        return sorted(merged.items(), key=lambda kv: kv[1], reverse=True)

    def best(self, text):
        """(label, probability) of the most likely label, the probabilities of aliases added to their label's."""
        merged = np.bincount(self.column_label, weights=self.probabilities(text).astype(np.float64))
        i = int(merged.argmax())
        return self.merged_labels[i], float(merged[i])
