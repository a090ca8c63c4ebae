"""
Safety at generation time (`--safe=True` in sample.py, train.py's samples and finetune.py --predict): the
model never produces a word from ROOTS' flagged-word lists, and personal data never reaches the terminal.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --safe=True

Flagged words are kept out while sampling, not cut out afterwards. `FlaggedWordFilter` is a logits processor
for GPT.generate_tokens: at each step it masks (logits -inf) every token that would complete a flagged word,
whatever tokens spell it, by running an automaton over the text's bytes. A flagged word is one that stands
on its own, lower-cased, with whitespace, a special character of ROOTS' list (punctuation, digits, symbols;
not the few letters and vowel signs the list holds) or the start or end of the text on each side. That
catches every word ROOTS' filter counted (the runs between whitespace, stripped of special characters at
both ends) and also "porn.com", while "analysis", "cocktail" and "assistant" stay possible. A word is
complete only when the character after it is such an edge, so the token masked is the one that would end
it there (a space, a full stop, <|endoftext|>), or, at the last step, any token that leaves one complete
at the end of the text. Several-word entries match their words with any run of edge characters between
them (ROOTS matched word pairs for vi). Entries written in Han characters (zh) match anywhere, since
Chinese puts no spaces between words; Han characters also end the words of other scripts. The prompt's
language picks the list (the data stage's identifier); a prompt whose language has no list, or that is
too short to tell (e.g. "\n"), gets every list at once. Words the prompt itself completes are its own.

Personal data (curate.py's detector: e-mails, IP addresses, keys, @handles; phone numbers when asked) is
replaced by PI:<KIND> as the text streams, holding back only the end of the text that may still grow
into a match (settled_pii). Both report what they did (`SafeGeneration.summary`).
"""

import bisect
import codecs
import functools
import re
import unicodedata
from collections import Counter

import numpy as np
import torch

from configurator import NanorootsError
from curate import lang_id_keeps, language_identifier, roots_resources
from pii import PII_KINDS, PII_LOOKBEHIND, find_pii

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK Unified Ideographs: Extension A, the main block, Compatibility
HAN_CHAR = re.compile(f"[{HAN}]")


class SafetyError(NanorootsError):
    """Generation that cannot be kept safe; the message says why."""


def prompt_language(text):
    """The prompt's language code by the data stage's identifier and ROOTS' minimum score for it (the one place
    this file calls them); "und" below that score, which is where most prompts of a few words are."""
    lang, score = language_identifier()(text)
    return lang if text.strip() and lang_id_keeps(lang, score, None, roots_resources()) else "und"


def flagged_words(lang):
    """ROOTS' flagged words for `lang`; every list together for a language without one (or unknown): each
    list starts with the same English base list, and a prompt too short to identify says nothing of its reply."""
    flagged = roots_resources().flagged
    return flagged.get(lang) or frozenset().union(*flagged.values())


def pii_kinds(phone=False):
    return PII_KINDS + (("PHONE",) if phone else ())


# -----------------------------------------------------------------------------
# the flagged-word automaton over characters, then over bytes

class FlaggedWordAutomaton:
    """
    Tracks, character by character, every way the text so far may be spelling a flagged word. A state is
    (word threads, Han threads, undecoded bytes); a word thread is a node of the trie of the entries, and
    one starts at the start of the text and after every edge character (whitespace, a special character, a
    Han character). A thread at a complete entry makes the state `pending`: the next edge character, or the
    end of the text, completes the word. Inside a several-word entry any run of edge characters stands for
    the space. Han threads start at every character. States are interned to small ints and transitions
    memoised, so text the automaton has seen costs a dict lookup per byte.
    """

    def __init__(self, words):
        special = roots_resources().special  # letters and vowel signs in it (ø, π, ा) are parts of words
        self.edge_special = frozenset(c for c in special if unicodedata.category(c)[0] not in "LM")
        self.next, self.complete, self.gaps = [{}], set(), set()  # the word trie; gaps: nodes after a space
        self.han_next, self.han_complete = [{}], set()            # entries written in Han: substrings
        for entry in words:
            entry = " ".join(entry.lower().split())
            if HAN_CHAR.search(entry):
                self.han_complete.add(self.insert(self.han_next, entry))
            elif entry:
                self.complete.add(self.insert(self.next, entry, self.gaps))
        self.states, self.ids, self.memo, self.pending = [], {}, {}, []
        self.start = self.intern(frozenset({0}), frozenset(), b"")  # the start of a text
        self.dead = self.intern(frozenset(), frozenset(), b"")      # inside a word that cannot be flagged

    @staticmethod
    def insert(trie, text, gaps=None):
        node = 0
        for c in text:
            if c not in trie[node]:
                trie.append({})
                trie[node][c] = len(trie) - 1
                if c == " " and gaps is not None:
                    gaps.add(len(trie) - 1)
            node = trie[node][c]
        return node

    def intern(self, threads, han, partial):
        key = (threads, han, partial)
        if key not in self.ids:
            self.ids[key] = len(self.states)
            self.states.append(key)
            self.pending.append(bool(threads & self.complete))
        return self.ids[key]

    def is_edge(self, c):
        return c.isspace() or c in self.edge_special or HAN_CHAR.match(c) is not None

    def step_char(self, threads, han, c):
        """One lower-cased character: (threads, han, violated). An owned thread (~node, see own) goes on
        like its node but completes nothing."""
        violated, out = False, set()
        if self.is_edge(c):
            out.add(0)
            for t in threads:
                node = ~t if t < 0 else t
                violated |= node in self.complete and t >= 0
                if node in self.gaps:  # a run of edge characters between the words of an entry
                    out.add(node)
                elif " " in self.next[node]:
                    out.add(self.next[node][" "])
                if c in self.next[node]:  # an entry that spells this character itself (भगवान-शापित)
                    out.add(self.next[node][c])
        else:
            out = {self.next[~t if t < 0 else t][c] for t in threads if c in self.next[~t if t < 0 else t]}
        if self.han_complete:
            han = {self.han_next[h][c] for h in (*han, 0) if c in self.han_next[h]}
            violated |= bool(han & self.han_complete)
        return frozenset(out), frozenset(han), violated

    def step_text(self, q, text, partial=b""):
        threads, han, _ = self.states[q]
        violated = False
        for ch in text:
            for c in ch.lower():  # one character may lower-case to two (İ)
                threads, han, v = self.step_char(threads, han, c)
                violated |= v
        return self.intern(threads, han, partial), violated

    def step_byte(self, q, b):
        """(state, violated) after one byte; bytes of an unfinished character wait in the state, and invalid
        UTF-8 becomes U+FFFD, as sample.py's decoder shows it."""
        hit = self.memo.get((q, b))
        if hit is None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            text = decoder.decode(self.states[q][2] + bytes((b,)))
            hit = self.memo[q, b] = self.step_text(q, text, decoder.getstate()[0])
        return hit

    def end_of_text(self, q):
        """(state, violated) at <|endoftext|>: the end of one text and the start of the next."""
        q, violated = self.step_text(q, self.states[q][2].decode("utf-8", errors="replace"))
        return self.start, violated or self.pending[q]

    def own(self, q):
        """The state with the prompt's complete words given to the prompt: the model may go on from them
        ("porn" + "s"), but a word the prompt already completed is not one the model produces."""
        threads, han, partial = self.states[q]
        return self.intern(frozenset(~t if t in self.complete else t for t in threads), han, partial)


# -----------------------------------------------------------------------------
# from bytes to tokens: which tokens complete a flagged word, per automaton state

class FlaggedWordMasks:
    """
    Per automaton state, the tokens that would complete a flagged word (and, for the last step, those that
    would leave one complete at the end), computed once per state and cached. The vocabulary is sorted by
    its bytes, so the tokens sharing a prefix form one range: a state's masks come from a walk down that
    implicit trie which stops where the state's run has merged with the run from the `dead` state, computed
    for every token once at start-up, or where a flagged word is complete (the whole range is masked).
    Only the tokens whose first bytes interact with a word in progress are visited.
    """

    def __init__(self, tok, words):
        self.auto = auto = FlaggedWordAutomaton(words)
        self.specials = np.array(sorted(tok.special_ids.values()))
        special = set(self.specials.tolist())
        ordinary = [i for i in range(tok.vocab_size) if i not in special]
        pieces = [tok.decode_bytes([i]) for i in ordinary]
        order = sorted(range(len(ordinary)), key=pieces.__getitem__)
        self.ids = np.array([ordinary[j] for j in order], dtype=np.int64)
        self.bytes = [pieces[j] for j in order]
        self.vocab_size, self.token_bytes = tok.vocab_size, dict(zip(ordinary, pieces))
        # the run of every token from the dead state: the state after each prefix, -1 once it completed a word.
        # Consecutive tokens share a prefix, and its states (`path`).
        flat, path, prev = [], [auto.dead], b""
        for data in self.bytes:
            common = next((k for k, (x, y) in enumerate(zip(data, prev)) if x != y), min(len(data), len(prev)))
            del path[common + 1:]
            for b in data[common:]:
                q, violated = auto.step_byte(path[-1], b) if path[-1] >= 0 else (-1, True)
                path.append(-1 if violated else q)
            flat += path
            prev = data
        self.offset = np.cumsum([0] + [len(b) + 1 for b in self.bytes])
        self.base_state = np.array(flat, dtype=np.int64)
        ends = self.base_state[self.offset[1:] - 1]
        self.base_violates = ends < 0
        self.base_pending = np.array(auto.pending + [False])[ends]  # index -1: the False appended
        self.cache, self.advanced = {}, {}

    def advance(self, q, token):
        """The state after a token (a word it completes is not held against it: see own)."""
        hit = self.advanced.get((q, token))
        if hit is None:
            if token in self.token_bytes:
                q2 = q
                for b in self.token_bytes[token]:
                    q2, _ = self.auto.step_byte(q2, b)
            elif token < self.vocab_size:  # a special token
                q2, _ = self.auto.end_of_text(q)
            else:  # padding of the model's vocabulary: no text
                q2 = q
            hit = self.advanced[q, token] = q2
        return hit

    def absorb(self, ids):
        """The state after a prompt."""
        q = self.auto.start
        for t in ids:
            q = self.advance(q, t)
        return self.auto.own(q)

    def masks(self, q):
        """(violates, ends complete): two bool arrays over the tokenizer's ids for state q."""
        violates, pending = self.base_violates.copy(), self.base_pending.copy()
        if q != self.auto.dead:
            self.visit(q, 0, len(self.bytes), 0, violates, pending)
        out = np.zeros((2, self.vocab_size), dtype=bool)
        out[0, self.ids], out[1, self.ids] = violates, pending
        out[0, self.specials] = self.auto.pending[q]
        return out

    def visit(self, q, lo, hi, depth, violates, pending):
        """Tokens [lo, hi) share their first `depth` bytes, which took the state to q."""
        while lo < hi and len(self.bytes[lo]) == depth:
            violates[lo], pending[lo] = False, self.auto.pending[q]
            lo += 1
        while lo < hi:
            b = self.bytes[lo][depth]
            end = hi if b == 255 else bisect.bisect_left(self.bytes, self.bytes[lo][:depth] + bytes((b + 1,)), lo, hi)
            q2, violated = self.auto.step_byte(q, b)
            if violated:
                violates[lo:end] = True
            elif q2 != self.base_state[self.offset[lo] + depth + 1]:  # else the dead state's run holds from here
                self.visit(q2, lo, end, depth + 1, violates, pending)
            lo = end

    def blocked(self, q, last, width, device):
        """(ids tensor, bool array) of the tokens below `width` to mask in state q, cached; at the last step,
        tokens that leave a word complete count too. An index list, not a (V,) mask: mostly it is short."""
        key = (q, last, width, device)
        if key not in self.cache:
            violates, pending = self.masks(q)
            row = (violates | pending if last else violates)[:width]
            if row.all():
                raise SafetyError("every token would complete a flagged word here; run without --safe, or with a "
                                  "tokenizer that has single letters")
            self.cache[key] = (torch.from_numpy(np.flatnonzero(row)).to(device), row)
        return self.cache[key]


@functools.lru_cache(maxsize=8)
def flagged_word_masks(tok, lang):
    """Built once per tokenizer and language (a GPT-2 vocabulary takes a fraction of a second)."""
    return FlaggedWordMasks(tok, flagged_words(lang))


class FlaggedWordFilter:
    """
    The logits processor: called by GPT.generate_tokens before each of its `steps` samples with the
    sequences so far (B, T) and the logits (B, V), it masks the tokens that would complete a flagged word.
    The first call reads the prompt; later calls read the token each row added. A row that emitted
    `stop_token` is finished and left alone. Counts: `masked` vocabulary entries, over rows and steps;
    `masked_steps`, the (row, step) pairs with any; `first_choices`, those where the most likely token was one.
    """

    def __init__(self, masks, steps, stop_token=None):
        self.masks, self.steps, self.stop_token = masks, steps, stop_token
        self.states, self.done, self.step = None, None, 0
        self.masked = self.masked_steps = self.first_choices = 0

    def __call__(self, seq, logits):
        if self.states is None:
            self.states = [self.masks.absorb(row) for row in seq.tolist()]
            self.done = [False] * len(self.states)
        else:
            for i, t in enumerate(seq[:, -1].tolist()):
                self.done[i] |= t == self.stop_token
                self.states[i] = self.states[i] if self.done[i] else self.masks.advance(self.states[i], t)
        last = self.step == self.steps - 1
        self.step += 1
        for i, q in enumerate(self.states):
            ids, row = self.masks.blocked(q, last, logits.size(-1), logits.device)
            if self.done[i] or len(ids) == 0:
                continue
            self.masked += len(ids)
            self.masked_steps += 1
            self.first_choices += bool(row[int(logits[i].argmax())])
            logits[i].index_fill_(0, ids, float("-inf"))
        return logits


# -----------------------------------------------------------------------------
# personal data, redacted as the text streams

# Which part of a growing text is settled, read off pii.PII_PATTERNS (a change there must keep these sets
# in step; test_streaming_redaction_equals_redacting_the_whole_text fails otherwise). Every character of a match
# is in MATCH_CHARS (EMAIL, IP_ADDRESS, USER, KEY's code form), NUMBER_CHARS (KEY's numeric form: groups of
# digits and capitals with spaces or hyphens between) or PHONE_CHARS; a character in none of the kinds' sets
# ends every match and every look-behind (a hard separator).
MATCH_CHARS, NUMBER_CHARS, PHONE_CHARS = r"\w.%+/:=@\-", r"A-Z\d \-", r"\d ().+\-"  # regex class bodies
OPEN_TAILS = {  # a trailing run that more text may still turn into a match, per kind
    "EMAIL": re.compile(f"[{MATCH_CHARS}]*\\Z"),
    "KEY": re.compile(f"[{MATCH_CHARS}]*\\Z|[A-Z\\d][{NUMBER_CHARS}]*\\Z"),
    "PHONE": re.compile(f"(?:[+(\\d][{PHONE_CHARS}]*)?\\Z"),
}
OPEN_TAILS["IP_ADDRESS"] = OPEN_TAILS["USER"] = OPEN_TAILS["EMAIL"]


@functools.lru_cache(maxsize=None)
def last_hard_separator(kinds):
    """A regex whose match on text[:p] ends just after the last hard separator before p (greedy, so linear)."""
    chars = MATCH_CHARS + (NUMBER_CHARS if "KEY" in kinds else "") + (PHONE_CHARS if "PHONE" in kinds else "")
    return re.compile(f".*[^{chars}]", re.S)


def settled_pii(text, done, kinds=PII_KINDS, final=False):
    """
    For text that grows at its end: (cut, spans). No continuation of `text` can change the spans that
    find_pii finds before `cut`; `spans` are those in [done, cut) (`done`: an earlier cut). The text from `cut`
    on (the trailing run of characters a match may still extend) is held back; with final, nothing is.
    find_pii reads only from the last hard separator at least PII_LOOKBEHIND characters before `done`.
    """
    cut = len(text)
    if not final:
        cut = min(OPEN_TAILS[kind].search(text, done).start() for kind in kinds)
    head = last_hard_separator(tuple(kinds)).match(text, 0, max(0, done - PII_LOOKBEHIND))
    start = head.end() if head else 0
    spans = []
    for s, e, kind in find_pii(text[start:], kinds):
        s, e = s + start, e + start
        if s >= done and s < cut:
            if e > cut:  # a span already found that the cut would split: hold it back whole
                cut = s
                break
            spans.append((s, e, kind))
    return cut, spans


class PiiRedactor:
    """Text in, redacted text out, piece by piece: `feed` returns what is settled (settled_pii), so
    the printed text is exactly pii.redact_pii of the whole; `finish` returns the rest. `found` counts spans by kind."""

    def __init__(self, kinds=PII_KINDS):
        self.kinds, self.raw, self.done, self.found = kinds, "", 0, Counter()

    def feed(self, text, final=False):
        self.raw += text
        cut, spans = settled_pii(self.raw, self.done, self.kinds, final)
        out, pos = [], self.done
        for start, end, kind in spans:
            out += [self.raw[pos:start], f"PI:{kind}"]
            self.found[kind] += 1
            pos = end
        out.append(self.raw[pos:cut])
        self.done = cut
        return "".join(out)

    def finish(self):
        return self.feed("", final=True)


def redact(text, kinds, found):
    """The whole of `text` redacted, its spans added to the Counter `found`."""
    redactor = PiiRedactor(kinds)
    out = redactor.feed(text, final=True)
    found.update(redactor.found)
    return out


def describe_redactions(found):
    n = sum(found.values())
    return f"redacted {n} span{'s' * (n != 1)}" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(found.items()))})" if n else "")


class SafeGeneration:
    """What --safe=True adds to one generation from `prompt` (the user's text, which picks the word list):
    `filter` for generate_tokens, `stream` for the printed text, `redact` for text printed whole."""

    def __init__(self, tok, prompt, steps, stop_token=None, phone=False):
        self.lang = prompt_language(prompt)
        self.filter = FlaggedWordFilter(flagged_word_masks(tok, self.lang), steps, stop_token)
        self.kinds = pii_kinds(phone)
        self.streamer, self.found = PiiRedactor(self.kinds), Counter()

    def stream(self, text, final=False):
        return self.streamer.feed(text, final)

    def redact(self, text):
        return redact(text, self.kinds, self.found)

    def summary(self):
        f = self.filter
        return (f"safe ({self.lang} word list): masked {f.masked:,} tokens at {f.masked_steps} steps "
                f"({f.first_choices} times the model's first choice), {describe_redactions(self.found + self.streamer.found)}")
