"""
Untrusted and clumsy input: checkpoints and config.json files that lie about their size, file names that
try to leave their folder, and the bad input we tried as a new user would (the README's table). Each gets a
one-line error or the right result, in bounded time and memory.
"""

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

import bench
import finetune
import prepare
import sample
import train
from conftest import ROOT
from hf import read_hf_folder
from model import GPT, CheckpointError, GPTConfig, save_checkpoint
from test_interop import gpt2_tensors, write_gpt2_folder
from test_train import TINY

# --- metadata that claims more than the file holds --------------------------------------------------

LOAD_EACH = """
import json, resource, sys, time
from configurator import NanorootsError
from hf import load_pretrained
from model import model_from_checkpoint
results = {}
for path in sys.argv[1:]:
    start = time.time()
    try:
        model_from_checkpoint(load_pretrained(path))
        results[path] = "loaded"
    except NanorootsError as e:
        results[path] = str(e)
print(json.dumps({"results": results, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_hostile_sizes_are_refused_before_anything_is_allocated(tmp_path):
    """A 40 KB checkpoint or config.json claiming a million layers, 1e10 tokens or 1e11 positions: before the
    loader checked them, each cost minutes and gigabytes (or asked for terabytes). Now each is one line, all
    of them in one process that stays small and ends well within the time limit."""
    config = GPTConfig(block_size=32, vocab_size=70, n_layer=2, n_head=2, n_embd=32)
    state = GPT(config).state_dict()
    cases = {  # name -> the start of the error
        "ours_layers": (dict(n_layer=10**6), "says n_layer=1000000 but its weights hold 2 layers"),
        "ours_vocab": (dict(vocab_size=10**10), "transformer.wte.weight has shape (128, 32), model_args imply (10000000000, 32)"),
        "ours_positions": (dict(block_size=10**11), "transformer.wpe.weight has shape (32, 32), model_args imply (100000000000, 32)"),
        "ours_rope": (dict(pos="rope", block_size=10**11), "too long for RoPE tables"),
        "ours_float": (dict(n_layer=1e6), "n_layer=1000000.0 must be int"),
    }
    for name, (lie, _) in cases.items():
        save_checkpoint({"model": state, "model_args": asdict(config) | lie}, str(tmp_path / name))
    hf = {"hf_layers": (dict(n_layer=10**6), "says 1000000 layers but the weights hold 1"),
          "hf_vocab": (dict(vocab=10**10), "has shape (96, 16), but config.json implies (10000000000, 16)"),
          "hf_positions": (dict(n_positions=10**11), "has shape (64, 16), but config.json implies (100000000000, 16)")}
    for name, (lie, _) in hf.items():
        args = dict(n_layer=1, n_head=2, n_embd=16, vocab=96, n_positions=64) | lie
        write_gpt2_folder(tmp_path / name, gpt2_tensors(n_layer=1, n_embd=16, vocab=96, n_positions=64), **args)
    write_gpt2_folder(tmp_path / "hf_llama", gpt2_tensors(n_layer=1, n_embd=16), n_layer=1)
    (tmp_path / "hf_llama" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "vocab_size": 96, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "max_position_embeddings": 10**11}))
    cases |= hf | {"hf_llama": (None, "too long for RoPE tables")}
    paths = [str(tmp_path / name) for name in cases]
    run = subprocess.run([sys.executable, "-c", LOAD_EACH, *paths], capture_output=True, text=True, timeout=180,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    for (name, (_, expected)), path in zip(cases.items(), paths):
        assert expected in report["results"][path], (name, report["results"][path])
    assert report["max_rss_mb"] < 1500  # torch itself is most of it


def test_shard_names_in_an_index_stay_in_the_folder(tmp_path):
    tensors = gpt2_tensors()
    outside = tmp_path / "outside.safetensors"
    save_file(tensors, outside)  # whole and valid: reading it would succeed
    for name in ("../outside.safetensors", str(outside), "sub/../../outside.safetensors"):
        folder = tmp_path / f"hf{len(name)}"
        write_gpt2_folder(folder, tensors)
        os.remove(folder / "model.safetensors")
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: name for n in tensors}}))
        with pytest.raises(CheckpointError, match="not a file in .*; refusing to read outside the folder"):
            read_hf_folder(str(folder))


# --- input folders: what is not a file of the folder is not read -----------------------------------

def test_input_folder_does_not_follow_links_out_nor_open_fifos(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("ZQXJ secret key material ZQXJ\n")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    (folder / "inside_link.txt").symlink_to(folder / "a.txt")  # a link within the folder is read
    (folder / "secret.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (folder / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    os.mkfifo(folder / "pipe.txt")  # opening it would wait for a writer forever
    meta = prepare.prepare(prepare.configure(prepare.DEFAULTS, [f"--input={folder}", "--name=f", f"--data_root={tmp_path}",
                                                                "--curate=False"], verbose=False))
    assert meta["input_stats"] == {"skipped_symlinks_outside_folder": 1, "skipped_dangling_symlinks": 1,
                                   "skipped_not_regular_files": 1}
    assert meta["train_docs"] + meta["val_docs"] == 2  # a.txt and the link to it
    assert not {"Z", "Q", "X", "J"} & set(json.loads((tmp_path / "f" / "tokenizer.json").read_text())["chars"])


def test_name_cannot_leave_data_root(tmp_path):
    (tmp_path / "t.txt").write_text("some text " * 100)
    for name in ("../../x", "/tmp/x", ".."):
        with pytest.raises(SystemExit, match="must be a plain folder name"):
            prepare.main([f"--input={tmp_path / 't.txt'}", f"--name={name}", f"--data_root={tmp_path / 'data'}", "--curate=False"])
    assert sorted(os.listdir(tmp_path)) == ["t.txt"]


# --- bad input we tried: each a one-line error (the README's table) ----------------------------------

def one_line(main, args):
    """The message a script prints instead of a traceback: `<script>.py: <one line>`."""
    with pytest.raises(SystemExit) as e:
        main(args)
    message = str(e.value)
    assert re.match(r"^\w+\.py: ", message) and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory, shakespeare_char):
    """Copies of the Shakespeare dataset with a corrupt meta.json and a corrupt tokenizer.json, and bad input files."""
    root = tmp_path_factory.mktemp("bad")
    for name, file, text in (("bad_meta", "meta.json", '{"tokenizer": {"kind": "char", "file": "tokenizer.json"}, "vocab'),
                             ("bad_tok", "tokenizer.json", '{"kind": "char", "chars": ')):
        shutil.copytree(shakespeare_char, root / name)
        (root / name / file).write_text(text)
    lines = "\n".join(json.dumps({"text": f"document {i} " * 20}) for i in range(200)).encode()
    (root / "cut.jsonl.gz").write_bytes(gzip.compress(lines)[:300])
    (root / "plain.jsonl.gz").write_bytes(lines)
    (root / "dangling.txt").symlink_to(root / "missing.txt")
    os.mkfifo(root / "pipe.txt")
    (root / "syntax.py").write_text("batch_size = = 4\n")
    (root / "sft.json").write_text('[{"instruction": "a", "output": "b"},')
    (root / "one_class.jsonl").write_text("\n".join(json.dumps({"text": f"text {i}", "label": "pos"}) for i in range(20)))
    return root


CASES = [  # (script, arguments, what the user reads); {data}, {bad}, {out} are filled in
    ("train", ["{bad}/syntax.py"], "syntax.py, line 1: invalid syntax"),
    ("train", ["--n_embd=33"], "bad model config: n_embd=33 must be divisible by n_head=2"),
    ("train", ["--n_head=0"], "bad model config: n_head=0 must be at least 1"),
    ("train", ["--dropout=1.5"], "bad model config: dropout=1.5 must be in [0, 1)"),
    ("train", ["--pos=alibi"], "bad model config: pos='alibi' is not one of learned, rope"),
    ("train", ["--n_layer=-1"], "bad model config: n_layer=-1 must be at least 1"),
    ("train", ["--dtype=float64"], "dtype='float64' is not one of auto, float32, bfloat16, float16"),
    ("train", ["--device=gpu"], "device='gpu' is not one of auto, cpu, cuda, cuda:N, mps"),
    ("train", ["--dataset={bad}/bad_meta"], "bad_meta/meta.json is corrupt"),
    ("train", ["--dataset={bad}/bad_tok"], "bad_tok/tokenizer.json is corrupt"),
    ("prepare", ["--input={bad}/cut.jsonl.gz"], "cut.jsonl.gz is not a complete gzip file"),
    ("prepare", ["--input={bad}/plain.jsonl.gz"], "plain.jsonl.gz is not a complete gzip file"),
    ("prepare", ["--input={bad}/dangling.txt"], "dangling.txt is a symlink to a file that does not exist"),
    ("prepare", ["--input={bad}/pipe.txt"], "pipe.txt is not a regular file (a FIFO, socket or device)"),
    ("prepare", ["--input={bad}/sft.json", "--val_fraction=1.5"], "val_fraction=1.5 must be at least 0 and below 1"),
    ("prepare", ["--input={bad}/sft.json", "--data_root=/sys"], "cannot create /sys/x ("),
    ("finetune", ["--task=sft", "--dataset={bad}/sft.json"], "sft.json is not valid JSON"),
    ("finetune", ["--task=classify", "--dataset={bad}/one_class.jsonl"], "has examples of 1 class (pos); a classifier needs at least two"),
    ("sample", ["--num_samples=0"], "num_samples=0 must be at least 1"),
    ("sample", ["--temperature=-1"], "temperature=-1.0 must be 0 (greedy) or more"),
    ("sample", ["--top_k=-1"], "top_k=-1 must be 0 (all tokens) or more"),
    ("sample", ["--top_p=1.5"], "top_p=1.5 must be between 0 and 1"),
    ("sample", ["--start=to be or not to [MASK]"], "the prompt contains [MASK], which only a masked-LM encoder reads"),
    ("bench", ["--gen_tokens=0"], "gen_tokens=0: must be at least 1"),
]
if not torch.cuda.is_available():
    CASES.append(("train", ["--device=cuda"], "device='cuda' but this machine (or this PyTorch build) has no CUDA GPU"))
try:
    import wandb  # noqa: F401
except ImportError:  # the case below is what a machine without wandb shows
    CASES.append(("train", ["--wandb_log=True"], "wandb_log=True needs the wandb package: pip install wandb"))


@pytest.fixture(scope="module")
def clm_out(tmp_path_factory, shakespeare_char):
    out = tmp_path_factory.mktemp("clm") / "out"
    train.main([*TINY, f"--dataset={shakespeare_char}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2"])
    return str(out)


@pytest.mark.parametrize("script,args,expected", CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_input_is_one_line(script, args, expected, broken_data, shakespeare_char, clm_out, tmp_path):
    fill = dict(bad=broken_data, data=shakespeare_char, out=tmp_path / "out")
    args = [a.format(**fill) for a in args]
    main, base = {"train": (train.main, [*TINY, f"--dataset={shakespeare_char}", f"--out_dir={tmp_path / 'out'}", "--max_iters=2"]),
                  "prepare": (prepare.main, ["--name=x", f"--data_root={tmp_path}", "--curate=False"]),
                  "finetune": (finetune.main, ["--init_from=scratch", "--block_size=32", f"--tokenizer={shakespeare_char}",
                                               "--n_layer=1", "--n_embd=16", "--n_head=2", f"--out_dir={tmp_path / 'out'}",
                                               "--device=cpu", "--max_iters=2"]),
                  "sample": (sample.main, [f"--out_dir={clm_out}", "--device=cpu", "--max_new_tokens=5"]),
                  "bench": (bench.main, ["--device=cpu", "--sections=generate", "--n_layer=1", "--n_embd=16", "--n_head=2"])}[script]
    assert expected in one_line(main, [*base, *args])


# --- and the ones that now give the right result ----------------------------------------------------

def test_empty_prompt_starts_a_new_document_and_top_p_zero_is_greedy(clm_out, capsys):
    sample.main([f"--out_dir={clm_out}", "--device=cpu", "--start=", "--num_samples=1", "--max_new_tokens=8"])
    assert len(capsys.readouterr().out.split("-" * 40)[0]) > 1
    outputs = []
    for options in (["--temperature=0"], ["--temperature=0.8", "--top_p=0"]):  # the top token is always kept
        sample.main([f"--out_dir={clm_out}", "--device=cpu", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=12", *options])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]


def test_char_dataset_without_newlines_ends_with_a_sample(tmp_path, capsys):
    (tmp_path / "one_line.txt").write_text("to be or not to be that is the question " * 400)
    prepare.main([f"--input={tmp_path / 'one_line.txt'}", "--name=nl", f"--data_root={tmp_path}", "--curate=False"])
    train.main([*TINY, f"--dataset={tmp_path / 'nl'}", f"--out_dir={tmp_path / 'out'}", "--max_iters=2", "--eval_interval=2"])
    sample_text = capsys.readouterr().out.split("-" * 40)[-2]
    assert len(sample_text.strip()) > 0  # it began from <|endoftext|>, the vocabulary has no "\n"


def test_classification_labels_must_be_names_or_numbers(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": 1}, {"text": "c", "label": None},
            {"text": "d", "label": [1, 2]}, {"text": "e", "label": {"x": 1}}, {"text": "f", "label": " "}]
    (tmp_path / "labels.jsonl").write_text("\n".join(map(json.dumps, rows)))
    stats = Counter()
    assert list(finetune.read_examples(str(tmp_path / "labels.jsonl"), stats)) == [("a", "pos"), ("b", "1")]
    assert stats["skipped_records"] == 4  # null, a list, an object and a blank would each have been a class
