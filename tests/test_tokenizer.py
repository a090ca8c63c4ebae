import json
import os

import pytest
import tiktoken
import tiktoken.load

from dataset import DataError
from tokenizer import (EOT, GPT2_DIR, GPT2_PATTERN, SPECIAL_TOKENS, CharTokenizer, TokenizerError, gpt2_tokenizer,
                       load_tokenizer, tokenizer_from_spec)

MIXED = [
    "Hello world! It's 2026; we'll see.\n\n  Indented\tand tabbed   ",
    "你好，世界。机器学习很有趣！",
    "emoji 🎉🙂👩‍👩‍👧 and accents: naïve café Ångström",
    "numbers 1234567 3.14159 and symbols <>{}[]()~`|\\",
    "trailing spaces    \n\n\n",
    "\u200b zero-width, \x00 nul, \x7f del, \u2028 line sep",
]


@pytest.fixture(scope="module")
def reference_gpt2():
    """tiktoken's own GPT-2 loader run on the bundled files (it never needs the network for local paths)."""
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(GPT2_DIR, "vocab.bpe"),
                                                          os.path.join(GPT2_DIR, "encoder.json"))
    return tiktoken.Encoding("gpt2-reference", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def test_char_round_trip():
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text)) + len(SPECIAL_TOKENS)


def test_char_specials_only_when_asked():
    tok = CharTokenizer.from_text("to be or not [MASK]")
    plain = tok.encode("to be [MASK]")
    special = tok.encode("to be [MASK]", allow_special=True)
    assert len(plain) == len("to be [MASK]")
    assert special[-1] == tok.special_ids["[MASK]"] and len(special) == len("to be ") + 1


def test_char_unknown_character_is_a_clear_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError, match="not in this character vocabulary"):
        tok.encode("abz")


@pytest.mark.parametrize("text", MIXED)
def test_gpt2_matches_tiktoken_reference(text, reference_gpt2):
    tok = gpt2_tokenizer()
    assert tok.encode(text) == reference_gpt2.encode_ordinary(text)
    assert tok.decode(tok.encode(text)) == text


def test_gpt2_known_ids_and_specials():
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.special_ids[EOT] == 50256
    assert [tok.special_ids[s] for s in SPECIAL_TOKENS[1:]] == [50257, 50258, 50259, 50260]
    assert tok.vocab_size == 50261
    assert tok.encode("a<|endoftext|>b", allow_special=True) == [64, 50256, 65]
    assert 50256 not in tok.encode("a<|endoftext|>b")  # user text never becomes a special token by accident
    assert tok.encode("fill [MASK] here", allow_special=True) == [20797, 220, 50257, 994]


def test_spec_round_trip_and_load_from_meta(tmp_path):
    tok = CharTokenizer.from_text("hello there")
    assert tokenizer_from_spec(json.loads(json.dumps(tok.spec()))).encode("there") == tok.encode("there")
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok.spec()))
    (tmp_path / "meta.json").write_text(json.dumps({"tokenizer": {"kind": "char", "file": "tokenizer.json"}}))
    assert load_tokenizer(str(tmp_path)).encode("hello") == tok.encode("hello")
    with pytest.raises(DataError, match="prepare.py"):
        load_tokenizer(str(tmp_path / "missing"))
