"""
Tokenizers: text <-> token ids.

    char  one token per character, vocabulary taken from the corpus (nanoGPT's shakespeare_char)
    gpt2  OpenAI's GPT-2 byte-level BPE, built with tiktoken from the files bundled in data/gpt2_bpe/
          (no download), identical to tiktoken's "gpt2" encoding
    bpe   our own byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level variant), trained on the
          corpus by `train_bpe`, then run by tiktoken's encoder, so it encodes as fast as GPT-2's

Every kind carries the same special tokens, appended after its base vocabulary (GPT-2 already has
<|endoftext|> = 50256), and after them T5's 100 sentinels, which only an encoder-decoder embeds.
`load_tokenizer(data_dir)` rebuilds the right tokenizer from meta.json; `tokenizer_from_spec(spec)`
rebuilds it from the spec stored in a checkpoint. `hf_tokenizer_files(tok, ...)` writes any of them
in Hugging Face's format (tokenizer.json), with the same ids, for hf.py's export.

Training follows minbpe (github.com/karpathy/minbpe): pure functions for the algorithm
(`chunk_counts`, `merge`, `train_bpe`, `bpe_ranks`) and a thin object for the state. Unlike minbpe's
loop, which recounts every pair of the whole text for every merge, `train_bpe` counts each distinct
chunk once, weighted by its frequency, and after a merge updates only the chunks that contain the
merged pair, picking the next pair from a heap; that is what lets it train on tens of MB. The
learned ranks then go to tiktoken, whose merge-by-rank gives the same tokens as applying the merges
in training order (tests/test_bpe.py checks both claims against naive references).
"""

import heapq
import json
import os
import re
from collections import Counter, defaultdict

from tqdm import tqdm

from configurator import ConfigError, NanorootsError
from dataset import read_meta, read_tokenizer_spec

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_DIR = os.path.join(HERE, "data", "gpt2_bpe")
EOT = "<|endoftext|>"
# end of text separates documents; the other four are BERT's, used by the masked-LM objective and by
# classification finetuning (Devlin et al. 2019)
SPECIAL_TOKENS = [EOT, "[MASK]", "[CLS]", "[SEP]", "[PAD]"]
# GPT-2's pre-tokenisation split (Radford et al. 2019), as tiktoken spells it for "gpt2"/"r50k_base"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's split (cl100k_base in tiktoken_ext/openai_public.py): a run of letters with at most one
# leading non-letter, numbers in groups of at most 3 digits, punctuation runs, newlines, other
# whitespace. Han characters are letters (\p{L}), so a run of Chinese up to the next punctuation
# mark is one chunk; merges never cross chunks.
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
BERT_SPECIALS = SPECIAL_TOKENS[1:]  # inputs of an encoder; a causal model should never generate them
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")
# T5's sentinels (Raffel et al. 2020, sec. 3.1.4; its vocabulary has 100 <extra_id_N>): span corruption
# puts sentinel k where the k-th dropped span of the input was, and its target is each sentinel followed
# by its span. Their ids come after every other token, from vocab_size on, and vocab_size does not count
# them: no id of a prepared dataset, a checkpoint or GPT-2 moves, and only an encoder-decoder, whose
# vocab_size is the tokenizer's plus len(SENTINELS), has embeddings for them.
SENTINELS = [f"<extra_id_{i}>" for i in range(100)]
_NAMED_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS + SENTINELS) + ")")


class TokenizerError(NanorootsError):
    """Text or a tokenizer file that cannot be used; the message says why."""


def gpt2_byte_decoder():
    """GPT-2 stores byte strings as printable unicode: this maps each such character back to its byte.
    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 onwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    decoder, shifted = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            decoder[chr(256 + shifted)] = b
            shifted += 1
    return decoder


def gpt2_ranks(bpe_dir=GPT2_DIR):
    """Mergeable ranks {token bytes: id} from GPT-2's encoder.json (ids are merge ranks)."""
    path = os.path.join(bpe_dir, "encoder.json")
    if not os.path.exists(path):
        raise TokenizerError(f"{path} is missing; it ships with the repository (git checkout data/gpt2_bpe)")
    with open(path, encoding="utf-8") as f:
        encoder = json.load(f)
    byte_of = gpt2_byte_decoder()
    return {bytes(byte_of[c] for c in token): i for token, i in encoder.items() if token != EOT}


# -----------------------------------------------------------------------------
# training a byte-level BPE: the algorithm, as pure functions

def utf8(text):
    """The UTF-8 bytes of `text`, lone surrogates replaced by U+FFFD (as tiktoken's encode does)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def chunk_counts(texts, pattern=GPT4_PATTERN):
    """
    {chunk bytes: occurrences} over `texts`, split by the pre-tokenisation `pattern`. Counting each
    distinct chunk once is what makes training scale: text repeats its words. Special-token strings
    are cut out first, so no merge can ever learn (a piece of) one.
    """
    import regex  # the `regex` package tiktoken depends on (Python's `re` has no \p{L}); imported here, like
    split = regex.compile(pattern)  # tiktoken below, so that a character model's sample.py does not pay 0.1 s for it
    counts = Counter()
    for text in texts:
        for piece in _SPECIAL_SPLIT.split(text)[::2]:  # the specials sit at the odd positions
            counts.update(split.findall(piece))
    by_bytes = Counter()
    for chunk, n in counts.items():
        by_bytes[utf8(chunk)] += n
    return by_bytes


def merge(ids, pair, new_id):
    """
    `ids` with each occurrence of `pair`, taken left to right, replaced by `new_id` (minbpe's merge),
    and the positions of the new ids in the result. list.index finds each candidate at C speed.
    """
    a, b = pair
    out, sites, start, end = [], [], 0, len(ids) - 1
    while True:
        try:
            j = ids.index(a, start, end)  # the next `a` that has a token after it
        except ValueError:
            break
        if ids[j + 1] == b:
            out += ids[start:j]
            sites.append(len(out))
            out.append(new_id)
            start = j + 2
        else:
            out += ids[start:j + 1]
            start = j + 1
    out += ids[start:]
    return out, sites


def pair_changes(merged, sites, pair, new_id):
    """
    How merging `pair` = (a, b) into `new_id` at `sites` changed a word's adjacent pairs: around each
    new id, (left, a), (a, b), (b, right) became (left, new_id), (new_id, right); between two new
    ids, (b, a) became (new_id, new_id). Returns [(pair, +1 or -1), ...].
    """
    a, b = pair
    changes = []
    for j in sites:
        changes.append((pair, -1))
        if j > 0:
            left = merged[j - 1]
            changes += [((b, a) if left == new_id else (left, a), -1), ((left, new_id), 1)]
        if j + 1 < len(merged) and merged[j + 1] != new_id:
            changes += [((b, merged[j + 1]), -1), ((new_id, merged[j + 1]), 1)]
    return changes


def train_bpe(counts, n_tokens, min_frequency=2, progress=True):
    """
    BPE merges (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units")
    learned from `counts` {chunk bytes: occurrences}, until there are `n_tokens` tokens (the 256
    bytes included) or no pair occurs `min_frequency` times. Returns [[id, id], ...] in merge order.

    Each step merges the most frequent adjacent pair into token 256 + (merges so far); ties go to
    the smallest pair of ids, as in Hugging Face tokenizers' BpeTrainer, so a corpus always gives the
    same merges. A merge's bytes are never already a token: a span that is one token's bytes and
    starts and ends at token boundaries is split the same way wherever it occurs, so once (a, b)
    joined it, no other pair can. The ranks therefore give each byte string one id, as tiktoken needs.
    """
    words = [list(chunk) for chunk in counts]   # each distinct chunk as token ids, bytes at first
    freqs = list(counts.values())
    pair_counts = defaultdict(int)              # pair -> occurrences, weighted by chunk frequency
    where = defaultdict(set)                    # pair -> indices of the words that contain it
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    # max-heap on count via (-count, pair). An entry goes stale when its pair's count changes: one that
    # rose is pushed again at once, one that fell is pushed again when its old entry comes out.
    heap = [(-n, pair) for pair, n in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    bar = tqdm(total=n_tokens - 256, unit=" merges", desc="training BPE", mininterval=1,
               disable=None if progress else True)  # None: shown on a terminal only
    while 256 + len(merges) < n_tokens and heap:
        neg, pair = heapq.heappop(heap)
        n = pair_counts.get(pair, 0)
        if n != -neg:
            if 0 < n < -neg:
                heapq.heappush(heap, (-n, pair))
            continue
        if n < min_frequency:
            break
        new_id = 256 + len(merges)
        merges.append(list(pair))
        bar.update()
        # only the words that contain the pair change, and in them only the pairs next to a merge.
        # where[p] may still list words that lost p since: merging finds no site in them, a no-op.
        delta = Counter()
        for i in where[pair]:
            words[i], sites = merge(words[i], pair, new_id)
            for p, d in pair_changes(words[i], sites, pair, new_id):
                delta[p] += d * freqs[i]
                if d > 0:
                    where[p].add(i)
        for p, d in delta.items():  # the merged pair falls to 0 here and is dropped
            pair_counts[p] += d
            if pair_counts[p] == 0:
                del pair_counts[p], where[p]
            elif d > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    bar.close()
    return merges


def bpe_ranks(merges):
    """tiktoken's mergeable ranks {token bytes: id}: the 256 bytes, then merge n's bytes as 256 + n."""
    vocab = [bytes([b]) for b in range(256)]
    for n, (a, b) in enumerate(merges):
        if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
            raise TokenizerError(f"merge {n} ({a}, {b}) uses a token that does not exist yet: the tokenizer file "
                                 f"is corrupt; prepare the data again to retrain it")
        vocab.append(vocab[a] + vocab[b])
    ranks = {token: i for i, token in enumerate(vocab)}
    if len(ranks) < len(vocab):
        raise TokenizerError("two merges make the same token: the tokenizer file is corrupt; prepare the data again")
    return ranks


class CharTokenizer:
    """Characters of the training corpus, sorted, then the special tokens."""

    kind = "char"

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_ids = {s: len(self.chars) + i for i, s in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = len(self.chars) + len(SPECIAL_TOKENS)
        self.sentinel_ids = {s: self.vocab_size + i for i, s in enumerate(SENTINELS)}
        self.itos = dict(enumerate(self.chars)) | {i: s for s, i in (self.special_ids | self.sentinel_ids).items()}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def _encode_plain(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - set(self.stoi))
            raise TokenizerError(f"characters {unknown[:10]!r} are not in this character vocabulary "
                                 f"({len(self.chars)} chars); remove them or prepare data that contains them") from None

    def encode(self, text, allow_special=False):
        if not allow_special:
            return self._encode_plain(text)
        ids, named = [], self.special_ids | self.sentinel_ids
        for piece in _NAMED_SPLIT.split(text):
            ids += [named[piece]] if piece in named else self._encode_plain(piece)
        return ids

    def encode_batch(self, texts):
        return [self._encode_plain(t) for t in texts]

    def decode(self, ids):
        return "".join(self.itos.get(int(i), "\ufffd") for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8")

    def spec(self):
        return {"kind": "char", "chars": self.chars}


class TiktokenTokenizer:
    """Byte-level BPE run by tiktoken's Rust encoder: GPT-2's vocabulary, or one we trained (`merges`)."""

    def __init__(self, kind, ranks, pattern, merges=None):
        self.kind, self.pattern, self.ranks, self.merges = kind, pattern, ranks, merges
        base = max(ranks.values()) + 1
        if kind == "gpt2":  # <|endoftext|> is GPT-2's own token 50256; the other specials follow it
            self.special_ids = {EOT: base} | {s: base + i for i, s in enumerate(SPECIAL_TOKENS[1:], start=1)}
        else:
            self.special_ids = {s: base + i for i, s in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = max(self.special_ids.values()) + 1
        self.sentinel_ids = {s: self.vocab_size + i for i, s in enumerate(SENTINELS)}
        import tiktoken  # only BPE vocabularies need it (see chunk_counts)
        self.enc = tiktoken.Encoding(name=kind, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=self.special_ids | self.sentinel_ids,
                                     explicit_n_vocab=self.vocab_size + len(SENTINELS))

    def encode(self, text, allow_special=False):
        allowed = set(SPECIAL_TOKENS + SENTINELS) if allow_special else set()
        return self.enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids], errors="replace")

    def decode_bytes(self, ids):
        return self.enc.decode_bytes([int(i) for i in ids])

    def spec(self):
        """GPT-2's is fixed; a trained one is its merges, pattern and specials: plain lists and strings,
        so it goes into tokenizer.json and into checkpoints loaded with weights_only=True."""
        if self.merges is None:
            return {"kind": self.kind}
        return {"kind": self.kind, "pattern": self.pattern, "special_tokens": list(self.special_ids),
                "merges": [list(m) for m in self.merges]}


def gpt2_tokenizer():
    return TiktokenTokenizer("gpt2", gpt2_ranks(), GPT2_PATTERN)


def bpe_tokenizer(merges, pattern=GPT4_PATTERN):
    return TiktokenTokenizer("bpe", bpe_ranks(merges), pattern, merges)


def tokenizer_from_spec(spec):
    """Rebuild a tokenizer from `tok.spec()` (what meta.json and checkpoints store); a damaged spec is a
    TokenizerError, not whatever the constructor trips over."""
    if not isinstance(spec, dict):
        raise TokenizerError(f"a tokenizer spec is a JSON object, got {type(spec).__name__}; prepare the data again")
    try:
        return _tokenizer_from_spec(spec)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TokenizerError(f"the {spec.get('kind')} tokenizer spec is damaged ({type(e).__name__}: {e}); "
                             f"prepare the data again") from None


def _tokenizer_from_spec(spec):
    kind = spec.get("kind")
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "bpe":
        missing = [k for k in ("pattern", "special_tokens", "merges") if k not in spec]
        if missing:
            raise TokenizerError(f"the bpe tokenizer spec lacks {missing}: the file is incomplete; prepare the data again")
        if spec["special_tokens"] != SPECIAL_TOKENS:
            raise TokenizerError(f"the tokenizer's special tokens {spec['special_tokens']} differ from this code's "
                                 f"{SPECIAL_TOKENS}; prepare the data again with this version")
        return bpe_tokenizer(spec["merges"], spec["pattern"])
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of char, gpt2, bpe")


def build_tokenizer(kind, texts=None, vocab_size=8192, min_frequency=2, progress=True):
    """
    A new tokenizer of `kind`, fitted to `texts` (strings) where it learns: char takes its characters
    from them, bpe trains on them up to `vocab_size` tokens, specials included (stopping early
    when no pair occurs `min_frequency` times); gpt2's vocabulary is fixed.
    """
    texts = [texts] if isinstance(texts, str) else texts
    if kind == "char":
        tok = CharTokenizer.from_text(set().union(*map(set, texts or [])))
        if not tok.chars:
            raise TokenizerError("a char tokenizer needs training text to take its vocabulary from")
        return tok
    if kind == "bpe":
        n_tokens = vocab_size - len(SPECIAL_TOKENS)
        if n_tokens < 256:
            raise TokenizerError(f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs 256 byte tokens "
                                 f"and {len(SPECIAL_TOKENS)} special tokens; use at least {256 + len(SPECIAL_TOKENS)}")
        counts = chunk_counts(texts or [])
        if not counts:
            raise TokenizerError("no text to train the BPE tokenizer on: the training split is empty; give more documents")
        tok = bpe_tokenizer(train_bpe(counts, n_tokens, min_frequency, progress))
        if tok.vocab_size < vocab_size:
            print(f"note: BPE training stopped at {tok.vocab_size} tokens of the {vocab_size} asked for: no pair occurs "
                  f"min_frequency={min_frequency} times; give more text or lower min_frequency")
        return tok
    return tokenizer_from_spec({"kind": kind})


def load_tokenizer(data_dir):
    """The tokenizer a prepared dataset was written with, from its meta.json."""
    return tokenizer_from_spec(read_tokenizer_spec(data_dir, read_meta(data_dir)))


def encode_known(tok, text):
    """(ids, characters dropped): a char vocabulary leaves out the characters it lacks (new text given to a
    char model); a byte-level BPE encodes everything."""
    if tok.kind == "char":
        known = "".join(c for c in text if c in tok.stoi)
        return tok.encode(known), len(text) - len(known)
    return tok.encode(text), 0


# -----------------------------------------------------------------------------
# prompt templates: finetune.py's sft trains with them and sample.py --template generates with them

# Stanford Alpaca's template (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT), verbatim.
# The response follows "### Response:" directly and ends with the end-of-text token.
ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                          "Write a response that appropriately completes the request.\n\n"
                          "### Instruction:\n{instruction}\n\n### Response:")
TEMPLATES = ("alpaca",)


def format_prompt(instruction, input="", template="alpaca"):
    """The text a model sees before its response."""
    if template not in TEMPLATES:
        raise ConfigError(f"template={template!r} is not one of {', '.join(TEMPLATES)}")
    if input.strip():
        return ALPACA_PROMPT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


# -----------------------------------------------------------------------------
# Hugging Face export: tokenizer.json, the format of the `tokenizers` library, which transformers'
# AutoTokenizer, vLLM and llama.cpp's converter read, and tokenizer_config.json beside it

# text an exported byte-level BPE must encode exactly as we do (checked at export): English, Chinese,
# emoji (a ZWJ family, several code points), digit runs, whitespace runs, a special token
HF_PROBE = ("Hello world! It's 2026; we'll see.\n\n  你好，世界。机器学习很有趣！ emoji 🎉👩‍👩‍👧 naïve "
            "1234567\t\tend  \n<|endoftext|>[MASK]  ")


def gpt2_merges(bpe_dir=GPT2_DIR):
    """GPT-2's merges as (bytes, bytes) pairs in rank order, from vocab.bpe (a version line, then "a b" per line)."""
    path = os.path.join(bpe_dir, "vocab.bpe")
    if not os.path.exists(path):
        raise TokenizerError(f"{path} is missing; it ships with the repository (git checkout data/gpt2_bpe)")
    byte_of = gpt2_byte_decoder()
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")[1:]
    return [tuple(bytes(byte_of[c] for c in part) for part in line.split(" ")) for line in lines if line]


def hf_pattern(pattern):
    """
    A pre-tokenisation pattern for the Oniguruma engine that `tokenizers` runs. There `\\p{N}{1,3}+` is
    not possessive, as in Python's `regex`, but {1,3} repeated, i.e. any run of digits; so the `+`
    after an interval is dropped. In GPT-4's pattern the interval ends its alternative, where
    possessive and greedy match the same. The other possessive forms (`++`, `?+`, `*+`) mean the
    same in both engines; the export checks the result on HF_PROBE.
    """
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def hf_tokenizer(tok):
    """
    A `tokenizers.Tokenizer` that encodes text to the ids `tok.encode(text, allow_special=True)` gives
    and decodes ids to the same text. Byte-level BPE (gpt2, bpe): our pre-tokenisation pattern, then
    GPT-2's byte-to-character mapping, then the merges in rank order. Char: each character looked up
    alone (BPE with no merges); a character the vocabulary lacks is dropped, as finetune.py and the
    perplexity filter drop them, since there is no [UNK] token to map it to (our encode raises instead).
    The special tokens are matched in the text before anything else, as our encode does.
    """
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise TokenizerError("writing a Hugging Face tokenizer needs the `tokenizers` package: "
                             "pip install tokenizers (transformers installs it too)") from None
    if tok.kind == "char":
        hf = Tokenizer(models.BPE(dict(tok.stoi), [], unk_token=None))
        hf.decoder = decoders.Fuse()  # the characters joined with nothing between them
    else:
        char_of = {b: c for c, b in gpt2_byte_decoder().items()}
        as_text = lambda token: "".join(char_of[b] for b in token)  # noqa: E731
        if tok.merges is not None:
            by_id = {i: token for token, i in tok.ranks.items()}
            pairs = [(by_id[a], by_id[b]) for a, b in tok.merges]
        else:
            pairs = gpt2_merges()
        hf = Tokenizer(models.BPE({as_text(t): i for t, i in tok.ranks.items()},
                                  [(as_text(a), as_text(b)) for a, b in pairs]))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(hf_pattern(tok.pattern)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # bytes as GPT-2's printable characters
        hf.decoder = decoders.ByteLevel()
    specials = sorted(tok.special_ids, key=tok.special_ids.get)  # appended after the base vocabulary, in id order
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    wrong = {s: hf.token_to_id(s) for s in specials if hf.token_to_id(s) != tok.special_ids[s]}
    if wrong:
        raise TokenizerError(f"the Hugging Face tokenizer gives the special tokens ids {wrong}, ours are {tok.special_ids}: "
                             f"the base vocabulary does not end where the specials start")
    if tok.kind != "char" and hf.encode(HF_PROBE).ids != tok.encode(HF_PROBE, allow_special=True):
        raise TokenizerError(f"the Hugging Face tokenizer splits text differently from ours with pattern {tok.pattern!r}; "
                             f"hf_pattern() does not translate it to Oniguruma's syntax")
    return hf


def hf_tokenizer_files(tok, max_length, encoder=False):
    """
    {file name: text} of the Hugging Face tokenizer for `tok`: tokenizer.json and a tokenizer_config.json
    naming the special tokens (an encoder's [MASK], [CLS], [SEP] too). Nothing is added around the
    text (no BOS, no [CLS] ... [SEP]): our models were trained on the ids of the text alone.
    """
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "bos_token": EOT, "eos_token": EOT, "pad_token": "[PAD]",
              "clean_up_tokenization_spaces": False}  # else transformers' decode deletes the space in "word ."
    if encoder:
        config |= {"mask_token": "[MASK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    return {"tokenizer.json": hf_tokenizer(tok).to_str(pretty=True),
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False)}
