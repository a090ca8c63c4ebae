"""
Tokenizers: text <-> token ids.

    char  one token per character, vocabulary taken from the corpus (nanoGPT's shakespeare_char)
    gpt2  OpenAI's GPT-2 byte-level BPE, built with tiktoken from the files bundled in data/gpt2_bpe/
          (no download), identical to tiktoken's "gpt2" encoding

Every kind carries the same special tokens, appended after its base vocabulary (GPT-2 already has
<|endoftext|> = 50256). `load_tokenizer(data_dir)` rebuilds the right tokenizer from meta.json;
`tokenizer_from_spec(spec)` rebuilds it from the spec stored in a checkpoint.
"""

import json
import os
import re

import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_DIR = os.path.join(HERE, "data", "gpt2_bpe")
EOT = "<|endoftext|>"
# end of text separates documents; the other four are BERT's, used by the masked-LM objective and by
# classification finetuning (Devlin et al. 2019)
SPECIAL_TOKENS = [EOT, "[MASK]", "[CLS]", "[SEP]", "[PAD]"]
# GPT-2's pre-tokenisation split (Radford et al. 2019), as tiktoken spells it for "gpt2"/"r50k_base"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
BERT_SPECIALS = SPECIAL_TOKENS[1:]  # inputs of an encoder; a causal model should never generate them
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")


class TokenizerError(ValueError):
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


class CharTokenizer:
    """Characters of the training corpus, sorted, then the special tokens."""

    kind = "char"

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_ids = {s: len(self.chars) + i for i, s in enumerate(SPECIAL_TOKENS)}
        self.itos = dict(enumerate(self.chars)) | {i: s for s, i in self.special_ids.items()}
        self.vocab_size = len(self.chars) + len(SPECIAL_TOKENS)

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
        ids = []
        for piece in _SPECIAL_SPLIT.split(text):
            ids += [self.special_ids[piece]] if piece in self.special_ids else self._encode_plain(piece)
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
    """Byte-level BPE run by tiktoken's Rust encoder: GPT-2's vocabulary."""

    def __init__(self, kind, ranks, pattern):
        self.kind, self.pattern = kind, pattern
        base = max(ranks.values()) + 1
        if kind == "gpt2":  # <|endoftext|> is GPT-2's own token 50256; the other specials follow it
            self.special_ids = {EOT: base} | {s: base + i for i, s in enumerate(SPECIAL_TOKENS[1:], start=1)}
        else:
            self.special_ids = {s: base + i for i, s in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = max(self.special_ids.values()) + 1
        self.enc = tiktoken.Encoding(name=kind, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=self.special_ids, explicit_n_vocab=self.vocab_size)

    def encode(self, text, allow_special=False):
        allowed = set(SPECIAL_TOKENS) if allow_special else set()
        return self.enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids], errors="replace")

    def decode_bytes(self, ids):
        return self.enc.decode_bytes([int(i) for i in ids])

    def spec(self):
        return {"kind": self.kind}


def gpt2_tokenizer():
    return TiktokenTokenizer("gpt2", gpt2_ranks(), GPT2_PATTERN)


def tokenizer_from_spec(spec):
    """Rebuild a tokenizer from `tok.spec()` (what meta.json and checkpoints store)."""
    kind = spec.get("kind")
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "gpt2":
        return gpt2_tokenizer()
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of char, gpt2")


def build_tokenizer(kind, train_text=None):
    """A new tokenizer of `kind`; char learns its vocabulary from `train_text`."""
    if kind == "char":
        if not train_text:
            raise TokenizerError("a char tokenizer needs training text to take its vocabulary from")
        return CharTokenizer.from_text(train_text)
    return tokenizer_from_spec({"kind": kind})


def load_tokenizer(data_dir):
    """The tokenizer a prepared dataset was written with, from its meta.json."""
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(meta_path):
        raise TokenizerError(f"{meta_path} not found; run `python prepare.py` for this dataset first")
    with open(meta_path, encoding="utf-8") as f:
        entry = json.load(f)["tokenizer"]
    spec = {"kind": entry["kind"]}
    if "file" in entry:
        with open(os.path.join(data_dir, entry["file"]), encoding="utf-8") as f:
            spec = json.load(f)
    return tokenizer_from_spec(spec)
