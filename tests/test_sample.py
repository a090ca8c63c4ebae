import json

import numpy as np
import pytest

import prepare
import sample
import train

from conftest import assert_real_png
from test_train import TINY


@pytest.fixture(scope="module")
def clm_checkpoint(tmp_path_factory, shakespeare_char):
    root = tmp_path_factory.mktemp("clm")
    train.main([*TINY, f"--dataset={shakespeare_char}", f"--out_dir={root}/out", "--max_iters=30", "--eval_interval=30"])
    return str(root / "out")


@pytest.fixture(scope="module")
def memorised_mlm(tmp_path_factory):
    """An encoder trained until it knows one sentence by heart."""
    root = tmp_path_factory.mktemp("mlm")
    (root / "fox.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    prepare.main([f"--input={root}/fox.txt", "--name=fox", f"--data_root={root}", "--curate=False"])
    train.main([*TINY, f"--dataset={root}/fox", f"--out_dir={root}/out", "--objective=mlm", "--max_iters=300",
                "--eval_interval=300", "--mask_prob=0.3", "--n_head=4", "--n_embd=64", "--batch_size=32",
                "--block_size=24", "--weight_decay=0"])
    return str(root / "out")


def test_samples_are_generated_as_one_batch(clm_checkpoint, capsys):
    sample.main([f"--out_dir={clm_checkpoint}", "--start=ROMEO:", "--num_samples=3", "--max_new_tokens=15", "--device=cpu"])
    out = capsys.readouterr().out
    assert out.count("-" * 40) == 3 and out.count("ROMEO:") == 3


def test_greedy_sampling_is_the_same_with_and_without_cache(clm_checkpoint, capsys):
    outputs = []
    for cache in (True, False):
        sample.main([f"--out_dir={clm_checkpoint}", "--start=KING:", "--num_samples=1", "--max_new_tokens=25",
                     "--temperature=0", f"--use_kv_cache={cache}", "--device=cpu"])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and len(outputs[0]) > 30


def test_long_prompt_is_cropped_with_a_notice(clm_checkpoint, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("To be, or not to be, that is the question. " * 5)
    sample.main([f"--out_dir={clm_checkpoint}", f"--start=FILE:{prompt}", "--num_samples=1", "--max_new_tokens=5", "--device=cpu"])
    assert "keeping its last 32" in capsys.readouterr().err


def test_stop_must_be_one_token(clm_checkpoint):
    with pytest.raises(SystemExit, match="single token"):
        sample.main([f"--out_dir={clm_checkpoint}", "--stop=the end", "--device=cpu"])


def test_fill_mask_recovers_a_memorised_token(memorised_mlm, capsys):
    sample.main([f"--out_dir={memorised_mlm}", "--start=quick brown f[MASK]x jumps", "--device=cpu"])
    out = capsys.readouterr().out
    assert "filled: quick brown fox jumps" in out
    assert out.splitlines()[0].startswith("[MASK] at token 13: 'o'")


def test_fill_mask_order_most_confident_fills_every_mask(memorised_mlm, capsys):
    sample.main([f"--out_dir={memorised_mlm}", "--start=the qu[MASK]ck br[MASK]wn fox", "--fill_order=most_confident", "--device=cpu"])
    out = capsys.readouterr().out
    assert out.count("[MASK] at token") == 2 and "filled: the quick brown fox" in out


def test_mlm_prompt_without_mask_is_a_clear_error(memorised_mlm):
    with pytest.raises(SystemExit, match=r"masked-LM encoder.*\[MASK\]"):
        sample.main([f"--out_dir={memorised_mlm}", "--start=the quick brown fox", "--device=cpu"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        sample.main([f"--out_dir={tmp_path}", "--device=cpu"])


def test_attention_map_of_a_causal_model(clm_checkpoint, tmp_path):
    png, js = tmp_path / "attn.png", tmp_path / "attn.json"
    sample.main([f"--out_dir={clm_checkpoint}", "--start=ROMEO: my love", f"--attention={png}", f"--attention_json={js}", "--device=cpu"])
    data = json.loads(js.read_text())
    w = np.array(data["weights"])
    assert w.shape == (2, 14, 14) and data["layer"] == 1 and data["heads"] == [0, 1]  # TINY: 2 layers, 2 heads
    assert np.allclose(w.sum(-1), 1, atol=1e-5)
    assert np.allclose(np.triu(w, 1), 0)  # a causal model never looks ahead
    assert data["tokens"][:2] == ["R", "O"] and data["tokens"][6] == "\u2423"
    assert_real_png(png)


def test_attention_map_of_an_encoder_looks_both_ways(memorised_mlm, tmp_path):
    js = tmp_path / "attn.json"
    sample.main([f"--out_dir={memorised_mlm}", "--start=brown f[MASK]x", f"--attention_json={js}",
                 "--attention_layer=0", "--attention_head=1", "--device=cpu"])
    data = json.loads(js.read_text())
    w = np.array(data["weights"])
    assert w.shape == (1, 9, 9) and data["heads"] == [1] and data["tokens"][7] == "[MASK]"
    assert np.allclose(w.sum(-1), 1, atol=1e-5) and np.triu(w, 1).sum() > 0.1


def test_attention_map_with_chinese_tokens(tmp_path, capsys):
    root = tmp_path
    (root / "poem.txt").write_text("床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。\n" * 50)
    prepare.main([f"--input={root}/poem.txt", "--name=poem", f"--data_root={root}", "--curate=False"])
    train.main([*TINY, f"--dataset={root}/poem", f"--out_dir={root}/out", "--max_iters=2", "--eval_interval=2"])
    sample.main([f"--out_dir={root}/out", "--start=床前明月光", f"--attention={root}/a.png", "--device=cpu"])
    assert_real_png(root / "a.png", min_side=100)
    err = capsys.readouterr().err
    # either a font with the glyphs was found, or the labels fall back to code points with a notice
    assert err == "" or "labels show code points" in err


def test_attention_layer_out_of_range(clm_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="attention_layer must be in"):
        sample.main([f"--out_dir={clm_checkpoint}", f"--attention={tmp_path / 'a.png'}", "--attention_layer=5", "--device=cpu"])
