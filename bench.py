"""
Performance numbers: training throughput and MFU, generation with and without the KV cache (a GPT's
and an encoder-decoder's), masked-LM next to causal-LM training, ms/step on nanoGPT's baby config
(AdamW and Muon), and sample.py's start-up, time to first token and tokens/s. Prints a table;
numbers go in the README with the machine.

    python bench.py                                  # the default config (config/shakespeare_char.py)
    python bench.py config/gpt2.py --batch_size=16 --compile=True --sections=train
    python bench.py --plot                           # also draw bench.png
    python bench.py --sections=data_scale            # the data stage on 50, 200, 800 MB with 1 and 2 ranks

Timings take the median of several measured steps after warm-up steps (compilation, allocator
growth and caches settle there). When two variants are compared, they are measured in one run.
"""

import gzip
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import torch

import finetune
import prepare
import readers
import sample
import train
from configurator import ConfigError, NanorootsError, configure, script_main
from curate import roots_resources
from dataset import SHARED_DATA, DataError, atomic_write_text, dataset_dir, in_val_split, read_meta
from model import save_checkpoint
from optim import make_optimizer
from safety import SafeGeneration, flagged_word_masks, prompt_language
from tokenizer import build_tokenizer, gpt2_tokenizer, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = dict(train.DEFAULTS) | dict(
    sections="mlm,generate,nanogpt,sample",  # comma-separated: train, mlm (clm next to mlm), generate, nanogpt,
                                    # sample, tokenizers, data, data_scale, transfer
    vocab_size=0,                   # model vocabulary; 0 = the dataset's tokenizer, or GPT-2's 50257 without data
    bench_iters=10,                 # measured steps
    bench_warmup=3,                 # unmeasured steps first
    gen_tokens=200,                 # tokens generated per generation benchmark
    gen_batch=1,
    sample_new_tokens=500,          # sample section: tokens of the one sample sample.py generates
    sample_runs=3,                  # sample section: processes timed (the median is reported)
    plot=False,                     # write bench.png
    bench_out="",                   # also write the rows as JSON here
    data_mb="50,200,800",           # data_scale: sizes of the crawl-like corpora, MB
    data_ranks="1,2",               # data_scale: numbers of ranks to curate each with
    data_shard_mb=8.0,              # data_scale: prepare.py's shard_mb (enough shards to share among the ranks)
    data_dedup_memory_mb=256.0,     # data_scale: prepare.py's dedup_memory_mb (past it, dedup keys spill to disk)
    # transfer: learning curves of finetune.py (README, "Transfer learning"); several CPU-hours
    transfer_tasks="sst2,trec",     # built-in classification recipes (finetune.CLASSIFY_RECIPES)
    transfer_sizes="100,300,1000,3000,all",  # labelled training examples per run (all = the whole train split)
    transfer_seeds="1337,1338,1339",  # one run per seed: a different sample of examples, head and data order
    # the starts, separated by ';': label, then the finetune.py arguments that differ from transfer_config
    transfer_starts=("scratch: --init_from=scratch --tokenizer=english --causal=False --block_size=128 --pos=rope; "
                     "CLM: --init_from=out-clm-english; MLM: --init_from=out-mlm-english"),
    transfer_config="config/finetune_english.py",
    transfer_args="",               # finetune.py arguments added to every run
    transfer_step_scale=5.0,        # optimizer steps = scale * sqrt(examples): 50 for 100 (16 epochs), 416 for 6,920 (2)
    transfer_evals=8,               # dev evaluations per run (after step 0); the best chooses the checkpoint
    transfer_jobs=2,                # finetune.py processes at a time (each with threads=1 from transfer_config)
    transfer_dir="out-transfer",    # runs, results.jsonl (one line per run; a rerun skips what is there), transfer.md
    transfer_plot="docs/transfer.png",
    transfer_table_only=False,      # run nothing: the table and plot of what results.jsonl holds of this grid
)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn, iters, warmup, device):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build(cfg, system, objective):
    torch.manual_seed(cfg.seed)
    return train.new_model(cfg, cfg.vocab_size, causal=objective == "clm").to(system.device)


def bench_train(cfg, system, objective="clm"):
    """One optimiser step = gradient_accumulation_steps micro-batches of batch_size x block_size tokens."""
    raw = build(cfg, system, objective)
    model = train.wrap_model(raw, cfg, system)
    optimizer = make_optimizer(cfg, raw, system.device_type)
    scaler = torch.amp.GradScaler(system.device_type, enabled=system.dtype == "float16")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(cfg.vocab_size - 8, (cfg.batch_size, cfg.block_size), generator=g)
    if objective == "clm":
        y = torch.roll(x, -1, dims=1)
    else:  # the same masking as training, with [MASK] just past the ordinary ids
        x, y = train.mask_tokens(x, set(), cfg.vocab_size - 8, cfg.vocab_size - 7, cfg.mask_prob, g)
    x, y = train.to_device([x, y], system)

    def step():
        for _ in range(cfg.gradient_accumulation_steps):
            with system.autocast:
                _, loss = model(x, y)
            scaler.scale(loss / cfg.gradient_accumulation_steps).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip or float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    dt = median_time(step, cfg.bench_iters, cfg.bench_warmup, system.device)
    tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    mfu = raw.estimate_mfu(tokens, dt, system.device, system.dtype)
    name = f"train {objective} ({raw.get_num_params() / 1e6:.1f}M params, B={cfg.batch_size}, T={cfg.block_size})"
    rows = [dict(benchmark=name, metric="tokens/s", value=tokens / dt), dict(benchmark=name, metric="ms/iter", value=dt * 1000)]
    if mfu is not None:
        rows.append(dict(benchmark=name, metric="MFU %", value=mfu * 100))
    return rows


def bench_generate(cfg, system):
    """Tokens per second generating gen_tokens after a one-token prompt, with and without the KV cache."""
    model = build(cfg, system, "clm").eval()
    n = min(cfg.gen_tokens, cfg.block_size - 1)  # stay inside the context so both paths do the same work
    prompt = torch.zeros(cfg.gen_batch, 1, dtype=torch.long, device=system.device)
    rows, speed = [], {}
    for cache in (True, False):
        def gen(cache=cache):
            with system.autocast:
                model.generate(prompt, n, temperature=0, use_kv_cache=cache)
        dt = median_time(gen, max(1, cfg.bench_iters // 3), 1, system.device)
        speed[cache] = n * cfg.gen_batch / dt
        rows.append(dict(benchmark=f"generate {n} tokens, batch {cfg.gen_batch}, {'KV cache' if cache else 'no cache'}",
                         metric="tokens/s", value=speed[cache]))
    rows.append(dict(benchmark="generate: KV cache speed-up", metric="x", value=speed[True] / speed[False]))
    return rows + bench_generate_seq2seq(cfg, system, n, speed[True]) + bench_safe_generation(cfg, system, model, n)


def vocabulary_tokenizer(cfg):
    """A tokenizer for the benchmark model's vocabulary: the dataset's when it is prepared, GPT-2's for a
    GPT-2-sized vocabulary, else the characters of the bundled Shakespeare if they fit; None otherwise."""
    data_dir = dataset_dir(cfg.dataset)
    if os.path.exists(os.path.join(data_dir, "meta.json")) and read_meta(data_dir)["vocab_size"] == cfg.vocab_size:
        return load_tokenizer(data_dir)
    if cfg.vocab_size >= 50257:
        return gpt2_tokenizer()
    with open(os.path.join(HERE, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        tok = build_tokenizer("char", f.read())
    return tok if tok.vocab_size <= cfg.vocab_size else None


def bench_safe_generation(cfg, system, model, n):
    """--safe=True next to plain sampling (temperature 1, so the text wanders through many automaton states), in
    alternating rounds; the cost per token is also timed directly, around the filter and the streaming
    redaction, which a loaded machine's noise in the totals would hide. Start-up: the flagged-word automaton
    over the whole vocabulary, with every language's list (as for a prompt like "\\n"), after the language
    identifier's model has loaded (timed apart: a process pays it once, sample.py at its first prompt)."""
    tok = vocabulary_tokenizer(cfg)
    if tok is None:
        return []
    prompt = torch.tensor([tok.encode("\n")] * cfg.gen_batch, device=system.device)
    t0 = time.perf_counter()
    prompt_language("\n")  # loads the language identifier's model, once per process
    lang_id = time.perf_counter() - t0
    flagged_word_masks.cache_clear()
    t0 = time.perf_counter()
    SafeGeneration(tok, "\n", n)
    startup = time.perf_counter() - t0
    spent = []

    def gen(safe):
        guard = SafeGeneration(tok, "\n", n) if safe else None
        generator = torch.Generator(device=system.device).manual_seed(cfg.seed)
        inside = 0.0

        def timed_filter(seq, logits):
            nonlocal inside
            t = time.perf_counter()
            logits = guard.filter(seq, logits)
            sync(system.device)
            inside += time.perf_counter() - t
            return logits

        t0 = time.perf_counter()
        with system.autocast:
            for nxt in model.generate_tokens(prompt, n, temperature=1.0, generator=generator,
                                             logits_processor=timed_filter if safe else None):
                text = tok.decode_bytes([int(nxt[0])]).decode("utf-8", errors="replace")
                if safe:
                    t = time.perf_counter()
                    guard.stream(text)
                    inside += time.perf_counter() - t
        sync(system.device)
        if safe:
            spent.append(inside / n)
        return time.perf_counter() - t0

    times = {False: [], True: []}
    for _ in range(max(3, cfg.bench_iters // 2)):
        for safe in (False, True):
            times[safe].append(gen(safe))
    label = f"generate {n} tokens, batch {cfg.gen_batch}, temperature 1"
    return [dict(benchmark=f"{label}, plain", metric="tokens/s", value=n * cfg.gen_batch / statistics.median(times[False])),
            dict(benchmark=f"{label}, --safe=True", metric="tokens/s", value=n * cfg.gen_batch / statistics.median(times[True])),
            dict(benchmark=f"safe: time per step in the filter and redaction ({tok.kind}, vocab {tok.vocab_size})",
                 metric="us", value=statistics.median(spent) * 1e6),
            dict(benchmark=f"safe: start-up ({tok.kind} vocabulary, all word lists)", metric="ms", value=startup * 1e3),
            dict(benchmark="safe: language identifier's first call (py3langid model load)", metric="ms", value=lang_id * 1e3)]


def bench_generate_seq2seq(cfg, system, n, gpt_speed):
    """The encoder-decoder of the same size (n_decoder_layer decoder blocks, n_layer = n_decoder_layer by
    default) writing n tokens for a block_size/2-token input: the encoder runs once, every decoding step
    reads the cached self-attention and the cross-attention keys and values computed once."""
    torch.manual_seed(cfg.seed)
    model = train.new_model(cfg, cfg.vocab_size, seq2seq=True).to(system.device).eval()
    src = torch.randint(cfg.vocab_size, (cfg.gen_batch, max(1, cfg.block_size // 2)), device=system.device)
    start = torch.zeros(cfg.gen_batch, 1, dtype=torch.long, device=system.device)

    def gen():
        with system.autocast:
            model.generate(src, n, decoder_idx=start, temperature=0)
    speed = n * cfg.gen_batch / median_time(gen, max(1, cfg.bench_iters // 3), 1, system.device)
    layers = f"{model.config.n_layer}+{model.config.n_decoder_layer}"
    return [dict(benchmark=f"generate {n} tokens, batch {cfg.gen_batch}, encoder-decoder {layers}, KV cache", metric="tokens/s",
                 value=speed),
            dict(benchmark="generate: encoder-decoder / GPT tokens/s", metric="x", value=speed / gpt_speed)]


# nanoGPT's "baby GPT" for CPUs (its README: 4 layers, 4 heads, 128 wide, context 64, batch 12, no dropout,
# float32, lr 1e-3; its char vocabulary of tiny Shakespeare has 65 tokens), to compare per-step speed with it
NANOGPT_BABY = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, gradient_accumulation_steps=1,
                    dropout=0.0, bias=False, learning_rate=1e-3, beta2=0.99, vocab_size=65)


def bench_nanogpt(cfg, system):
    """ms per training step on nanoGPT's baby config: with AdamW (nanoGPT's optimizer) and with Muon."""
    rows = []
    for optimizer in ("adamw", "muon"):
        baby = SimpleNamespace(**(vars(cfg) | NANOGPT_BABY | {"optimizer": optimizer}))
        step = next(r for r in bench_train(baby, system) if r["metric"] == "ms/iter")
        rows.append(dict(step, benchmark=f"train nanoGPT's baby config (4x128, T=64, B=12), {optimizer}"))
    return rows


def bench_sample(cfg, system):
    """
    sample.py on a 6-layer, 384-wide char-level checkpoint (nanoGPT's Shakespeare model; random weights,
    as speed does not depend on them): the whole process for one 500-token sample, the process's start-up
    to `import sample`, loading the checkpoint to the first token in this process, and tokens/s at batch 1.
    """
    torch.manual_seed(cfg.seed)
    with open(os.path.join(HERE, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        tok = build_tokenizer("char", f.read(), progress=False)
    size = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.0, bias=False, vocab_size=tok.vocab_size)
    model = train.new_model(SimpleNamespace(**(vars(cfg) | size)), tok.vocab_size)
    n = cfg.sample_new_tokens
    with tempfile.TemporaryDirectory() as out_dir:
        save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config), "tokenizer": tok.spec()}, out_dir)
        threads = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))

        def process(*args):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *args], cwd=HERE, env=threads, check=True, capture_output=True)
            return time.perf_counter() - t0
        whole = statistics.median(process("sample.py", f"--out_dir={out_dir}", "--num_samples=1", f"--max_new_tokens={n}",
                                          f"--device={system.device}") for _ in range(cfg.sample_runs))
        start_up = statistics.median(process("-c", "import sample") for _ in range(cfg.sample_runs))
        t0 = time.perf_counter()
        loaded, _, _ = sample.load_for_inference(out_dir, system.device)
        tokens = loaded.generate_tokens(torch.zeros(1, 1, dtype=torch.long, device=system.device), n, top_k=200)
        next(tokens)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        rest = sum(1 for _ in tokens)
        speed = rest / (time.perf_counter() - t0)
    name = f"sample.py, 6x384 char model ({model.get_num_params() / 1e6:.1f}M)"
    return [dict(benchmark=f"{name}: whole process, {n} tokens", metric="s", value=whole),
            dict(benchmark=f"{name}: python + imports", metric="s", value=start_up),
            dict(benchmark=f"{name}: load checkpoint + first token", metric="ms", value=first * 1000),
            dict(benchmark=f"{name}: generation, batch 1", metric="tokens/s", value=speed)]


def bench_mlm(cfg, system):
    """Masked-LM training next to causal-LM training at the same size, measured in one run."""
    rows = bench_train(cfg, system, "clm") + bench_train(cfg, system, "mlm")
    tps = [r["value"] for r in rows if r["metric"] == "tokens/s"]
    return rows + [dict(benchmark="train: mlm / clm tokens/s", metric="x", value=tps[1] / tps[0])]



# -----------------------------------------------------------------------------
# tokenizers (python bench.py --sections=tokenizers): bytes per token on held-out English and
# Chinese, BPE training time, encoding MB/s of our BPE next to GPT-2's. CPU only; a few minutes.

def tokenizer_corpora():
    """{name: (language, train texts, held-out texts)}: every 10th document is held out (Shakespeare,
    one document, keeps its last 10%). Shakespeare is bundled; the others come from ../shared/data."""
    shared = SHARED_DATA
    with open(os.path.join(HERE, "data", "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        text = f.read()
    corpora = {"Shakespeare": ("en", [text[: len(text) * 9 // 10]], [text[len(text) * 9 // 10:]])}
    if not os.path.isdir(shared):
        print(f"note: {shared} is absent: tokenizers are measured on Shakespeare only")
        return corpora
    with open(os.path.join(shared, "clean_text_sample", "c4_demo.jsonl"), encoding="utf-8") as f:
        docs = {"C4 sample": ("en", [json.loads(line)["text"] for line in f])}
    poems = []
    for name in sorted(os.listdir(os.path.join(shared, "chinese_poetry"))):
        if name.startswith("poet.tang."):
            with open(os.path.join(shared, "chinese_poetry", name), encoding="utf-8") as f:
                poems += [readers.poem_text(p) for p in json.load(f)]
    docs["Tang poems"] = ("zh", poems)
    with open(os.path.join(shared, "chinese_web_sample", "cmrc2018_dev.json"), encoding="utf-8") as f:
        docs["zh Wikipedia"] = ("zh", [p["context"] for d in json.load(f)["data"] for p in d["paragraphs"]])
    for name, (lang, texts) in docs.items():
        corpora[name] = (lang, [t for i, t in enumerate(texts) if i % 10], texts[::10])
    return corpora


def encode_mb_per_s(tok, text, repeats=3):
    """Single-threaded encoding speed in MB of UTF-8 per second of wall time and per CPU second (the
    second holds on a busy machine), best of `repeats`."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, cpu0 = time.perf_counter(), time.process_time()
        tok.enc.encode_ordinary(text)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - cpu0)
    mb = len(text.encode()) / 1e6
    return mb / wall, mb / cpu


def bench_tokenizers(vocab_sizes=(1024, 4096, 16384), mixed_vocab_sizes=(8192, 32768)):
    """
    Bytes per token of each corpus's held-out part for char (one token per character), GPT-2, our BPE
    trained on the corpus's train part at each of `vocab_sizes`, and on all the train parts together
    (English and Chinese) at `mixed_vocab_sizes`; BPE training time (wall and CPU seconds); encoding
    MB/s in one thread, our mixed BPEs next to GPT-2.
    """
    corpora, rows, trained = tokenizer_corpora(), [], {}

    def train_bpe_timed(label, texts, vocab_size):
        t0, cpu0 = time.perf_counter(), time.process_time()
        tok = build_tokenizer("bpe", texts, vocab_size=vocab_size, progress=False)
        name = f"BPE training: {label}, {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB -> vocab {tok.vocab_size}"
        rows.extend([dict(benchmark=name, metric="s", value=time.perf_counter() - t0),
                     dict(benchmark=name, metric="CPU s", value=time.process_time() - cpu0)])
        return tok

    for name, (_, train_texts, _) in corpora.items():
        for v in vocab_sizes:
            trained[f"bpe {v} (own)", name] = train_bpe_timed(name, train_texts, v)
    mixed = [t for _, train_texts, _ in corpora.values() for t in train_texts]
    for v in mixed_vocab_sizes:
        trained[f"bpe {v} (en+zh)", None] = train_bpe_timed(" + ".join(corpora), mixed, v)
    gpt2 = gpt2_tokenizer()
    for name, (lang, _, held_out) in corpora.items():
        n_bytes = sum(len(t.encode()) for t in held_out)
        ratios = {"char": n_bytes / sum(map(len, held_out)), "gpt2": n_bytes / sum(map(len, gpt2.encode_batch(held_out)))}
        for (label, trained_on), tok in trained.items():
            if trained_on in (name, None):
                ratios[label] = n_bytes / sum(map(len, tok.encode_batch(held_out)))
        rows += [dict(benchmark=f"{name} ({lang}, {n_bytes / 1e6:.2f} MB held out): {label}", metric="bytes/token", value=r)
                 for label, r in ratios.items()]
    for lang in ("en", "zh"):
        text = "\n".join(t for language, train_texts, held_out in corpora.values() if language == lang
                         for t in train_texts + held_out)
        if text:
            for label, tok in [("gpt2", gpt2)] + [(k[0], t) for k, t in trained.items() if k[1] is None]:
                name = f"encode {lang}, {len(text.encode()) / 1e6:.1f} MB, 1 thread: {label}"
                wall, cpu = encode_mb_per_s(tok, text)
                rows += [dict(benchmark=name, metric="MB/s", value=wall), dict(benchmark=name, metric="MB/CPU s", value=cpu)]
    return rows




# -----------------------------------------------------------------------------
# data stage (python bench.py --sections=data): MB/s per process of each curation stage on the raw
# Common Crawl sample of ../shared/data (prepare.py's report measures them; this runs it once)

CRAWL_SAMPLE = os.path.join(SHARED_DATA, "web_crawl_sample", "CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz")


def data_stage_throughput(input_path, lang="en", tokenizer="char", **overrides):
    """MB/s per process of each data stage on `input_path`: one curated prepare.py run into a temporary
    folder; returns its report's rows [{stage, mb_per_s, seconds}]."""
    with tempfile.TemporaryDirectory() as root:
        cfg = SimpleNamespace(**(prepare.DEFAULTS | dict(input=input_path, name="bench", data_root=root, lang=lang,
                                                         tokenizer=tokenizer) | overrides))
        prepare.prepare(cfg)
        with open(os.path.join(root, "bench", "report.json"), encoding="utf-8") as f:
            return json.load(f)["throughput"]


def bench_data(cfg, system):
    """Every stage on the crawl sample (English); the stages whose cost depends on the language or the format on
    the Chinese Wikipedia sample (jieba words) and on HTML pages (tests/fixtures/html, 20 copies each)."""
    if not os.path.exists(CRAWL_SAMPLE):
        raise DataError(f"the data section reads {CRAWL_SAMPLE}, which is absent")
    size = os.path.getsize(CRAWL_SAMPLE) / 1e6
    rows = [dict(benchmark=f"data stage on the crawl sample ({size:.1f} MB gz), 1 process: {r['stage']}",
                 metric="MB/s", value=r["mb_per_s"]) for r in data_stage_throughput(CRAWL_SAMPLE, lang="en") if r["mb_per_s"]]
    with open(os.path.join(SHARED_DATA, "chinese_web_sample", "cmrc2018_dev.json"), encoding="utf-8") as f:
        chinese = [p["context"] for d in json.load(f)["data"] for p in d["paragraphs"]]
    html_dir = os.path.join(HERE, "tests", "fixtures", "html")
    pages = []
    for name in sorted(os.listdir(html_dir)):
        with open(os.path.join(html_dir, name), encoding="utf-8") as f:
            pages += [f.read()] * 20
    with tempfile.TemporaryDirectory() as tmp:
        for what, texts, lang, stages in (("Chinese Wikipedia", chinese, "zh", ("clean", "lang", "filters")),
                                          ("HTML pages", pages, "en", ("html",))):
            path = os.path.join(tmp, "docs.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
            rows += [dict(benchmark=f"data stage on {what}, 1 process: {r['stage']}", metric="MB/s", value=r["mb_per_s"])
                     for r in data_stage_throughput(path, lang=lang) if r["stage"] in stages]
    return rows


# -----------------------------------------------------------------------------
# transfer (python bench.py --sections=transfer): learning curves. finetune.py on SST-2 and TREC with N labelled
# examples, from scratch and from each pretrained model, several seeds; a table of mean +- std dev and test accuracy
# (test measured once per run, on the checkpoint dev accuracy chose) and docs/transfer.png. Runs are processes of
# their own, transfer_jobs at a time, each timed in CPU seconds; results.jsonl makes an interrupted bench resumable.

class TransferError(NanorootsError):
    pass


def training_examples(task):
    """How many examples finetune.py trains on for a built-in recipe with train_examples=0."""
    recipe = finetune.CLASSIFY_RECIPES[task]
    pairs = list(finetune.read_examples(os.path.join(SHARED_DATA, recipe["train"]), Counter()))
    known = [label in recipe["labels"] for _, label in pairs]
    if "val" in recipe:
        return sum(known)
    fraction, seed = finetune.dev_split(recipe, None)
    return sum(k and not in_val_split(i, fraction, seed) for i, k in enumerate(known))


def transfer_runs(cfg):
    """Every run: {key, task, start, n, seed, args}. Steps grow as sqrt(n): fewer examples need more epochs
    to be learned, and each epoch of them costs less; warmup is a tenth, cosine to a tenth of the peak."""
    starts = [part.partition(":") for part in cfg.transfer_starts.split(";") if part.strip()]
    for task in cfg.transfer_tasks.split(","):
        if task not in finetune.CLASSIFY_RECIPES:
            raise ConfigError(f"transfer_tasks: {task!r} is not a built-in recipe ({', '.join(finetune.CLASSIFY_RECIPES)})")
    totals = {task: training_examples(task) for task in cfg.transfer_tasks.split(",")}
    runs = []
    for size in cfg.transfer_sizes.split(","):  # the smallest N first: where pretraining should pay most
        for task, total in totals.items():
            n = total if size == "all" else min(int(size), total)
            steps = max(1, round(cfg.transfer_step_scale * math.sqrt(n)))
            schedule = [f"--train_examples={0 if size == 'all' else n}", f"--max_iters={steps}", f"--lr_decay_iters={steps}",
                        f"--warmup_iters={steps // 10}", f"--eval_interval={max(1, steps // cfg.transfer_evals)}"]
            for label, _, start_args in starts:
                for seed in cfg.transfer_seeds.split(","):
                    key = f"{task}_{label.strip()}_n{size}_s{seed}"
                    args = [f"--dataset={task}", *schedule, *shlex.split(start_args), *shlex.split(cfg.transfer_args),
                            f"--seed={seed}", f"--out_dir={os.path.join(cfg.transfer_dir, key)}"]
                    runs.append(dict(key=key, task=task, start=label.strip(), size=size, n=n, seed=int(seed), args=args))
    return runs


def run_result(run, cpu_seconds):
    """Dev accuracy of the checkpoint dev chose and its test accuracy, from the run's log.jsonl."""
    with open(os.path.join(run["args"][-1].split("=", 1)[1], "log.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    test = [r for r in records if "test_acc" in r]
    if not test:
        raise TransferError(f"{run['key']} has no test accuracy in its log.jsonl")
    chosen = next(r for r in records if r.get("iter") == test[-1]["iter"] and "val_acc" in r)
    return dict(run, dev_acc=chosen["val_acc"], test_acc=test[-1]["test_acc"], chosen_iter=test[-1]["iter"],
                steps=max(r["iter"] for r in records if "val_acc" in r), cpu_s=round(cpu_seconds, 1))


def launch_finetune(run, cfg):
    out_dir = run["args"][-1].split("=", 1)[1]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "stdout.txt"), "w") as log:
        return subprocess.Popen([sys.executable, os.path.join(HERE, "finetune.py"), cfg.transfer_config, *run["args"]],
                                stdout=log, stderr=subprocess.STDOUT)


def wait_any(running):
    """(pid, status, resource usage) of the first of the running processes to end."""
    while True:
        for pid in running:
            ended, status, usage = os.wait4(pid, os.WNOHANG)
            if ended:
                return pid, status, usage
        time.sleep(1)


def run_transfer(cfg, runs, results_path):
    """Run what results.jsonl lacks, transfer_jobs at a time; append each result as it finishes."""
    done = set()
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            done = {(r["key"], tuple(r["args"])) for r in map(json.loads, f) if r.get("dev_acc") is not None}
    todo = [r for r in runs if (r["key"], tuple(r["args"])) not in done]
    print(f"transfer: {len(runs)} runs, {len(runs) - len(todo)} already in {results_path}", flush=True)
    running, failed = {}, []
    while todo or running:
        while todo and len(running) < cfg.transfer_jobs:
            run = todo.pop(0)
            process = launch_finetune(run, cfg)
            running[process.pid] = (process, run)
        pid, status, usage = wait_any(running)
        process, run = running.pop(pid)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, by os.wait4 (which also gives its CPU time)
        if process.returncode != 0:
            failed.append(run["key"])
            print(f"transfer: {run['key']} failed; see {os.path.join(cfg.transfer_dir, run['key'], 'stdout.txt')}", flush=True)
            continue
        result = run_result(run, usage.ru_utime + usage.ru_stime)
        for name in os.listdir(os.path.join(cfg.transfer_dir, run["key"])):  # the logs stay, the weights go
            if name.startswith("ckpt"):
                os.remove(os.path.join(cfg.transfer_dir, run["key"], name))
        with open(results_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
        print(f"transfer: {run['key']}: dev {result['dev_acc']:.4f} (step {result['chosen_iter']}), "
              f"test {result['test_acc']:.4f}, {result['cpu_s']:.0f} CPU-s", flush=True)
    return failed


def summarize_transfer(results):
    """One row per (task, start, size): mean and standard deviation (over seeds) of dev and test accuracy in %,
    the number of seeds, and the mean CPU seconds per run."""
    groups = {}
    for r in results:
        groups.setdefault((r["task"], r["start"], r["size"]), []).append(r)
    rows = []
    for (task, start, size), rs in groups.items():
        row = dict(task=task, start=start, size=size, n=rs[0]["n"], seeds=len(rs), cpu_s=statistics.mean(r["cpu_s"] for r in rs))
        for split in ("dev", "test"):
            values = [100 * r[f"{split}_acc"] for r in rs]
            row[split] = statistics.mean(values)
            row[f"{split}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def transfer_table(rows):
    """Markdown: per task and N, each start's dev and test accuracy (mean +- std over seeds, or the one seed's
    value, said so), then the CPU time per task and start."""
    starts = list(dict.fromkeys(r["start"] for r in rows))
    cell = {(r["task"], r["size"], r["start"]): r for r in rows}
    lines = ["| task | N | " + " | ".join(f"{s} dev | {s} test" for s in starts) + " |",
             "|---|---:|" + "---:|---:|" * len(starts)]
    tasks, n_of = list(dict.fromkeys(r["task"] for r in rows)), {(r["task"], r["size"]): r["n"] for r in rows}
    for task, size in sorted(n_of, key=lambda key: (tasks.index(key[0]), n_of[key])):  # by task, then N
        n = n_of[(task, size)]
        values = []
        for s in starts:
            r = cell.get((task, size, s))
            values += [("" if not r else f"{r[k]:.1f} ± {r[k + '_std']:.1f}" if r["seeds"] > 1 else f"{r[k]:.1f} (1 seed)")
                       for k in ("dev", "test")]
        lines.append(f"| {task} | {n:,}{' (all)' if size == 'all' else ''} | " + " | ".join(values) + " |")
    cpu = {}
    for r in rows:
        cpu[(r["task"], r["start"])] = cpu.get((r["task"], r["start"]), 0.0) + r["cpu_s"] * r["seeds"]
    lines += ["", "| task | start | CPU-minutes, all sizes and seeds |", "|---|---|---:|"]
    lines += [f"| {task} | {start} | {seconds / 60:.1f} |" for (task, start), seconds in cpu.items()]
    lines.append(f"| all | all | {sum(cpu.values()) / 60:.1f} |")
    return "\n".join(lines) + "\n"


def plot_transfer(rows, path):
    """Accuracy against N (log axis) per task, dev and test, one line per start with +- std error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    for ax_row, task in zip(axes, tasks):
        for ax, split in zip(ax_row, ("dev", "test")):
            starts = list(dict.fromkeys(r["start"] for r in rows))
            for i, start in enumerate(starts):
                line = sorted((r for r in rows if r["task"] == task and r["start"] == start), key=lambda r: r["n"])
                if not line:  # a start run on some tasks only (LoRA on SST-2) stays out of the others' legends
                    continue
                shift = 1.04 ** (i - (len(starts) - 1) / 2)  # side by side at each N, so the error bars stay apart
                ax.errorbar([r["n"] * shift for r in line], [r[split] for r in line], yerr=[r[f"{split}_std"] for r in line],
                            marker="o", capsize=3, label=start, color=f"C{i}")  # one colour per start in every panel
            ax.set_xscale("log")
            sizes = [r["n"] for r in rows if r["task"] == task]
            ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)  # a task measured at one N still gets a readable axis
            ax.set_xlabel("labelled training examples")
            ax.set_ylabel(f"{split} accuracy (%)")
            ax.set_title(f"{task}: {split}")
            ax.grid(alpha=0.3, which="both")
            ax.legend()
    fig.suptitle("finetuning accuracy against labelled examples: mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bench_transfer(cfg, system):
    """Run the learning curves (what results.jsonl lacks), then write the table and the plot."""
    runs = transfer_runs(cfg)
    os.makedirs(cfg.transfer_dir, exist_ok=True)
    results_path = os.path.join(cfg.transfer_dir, "results.jsonl")
    failed = [] if cfg.transfer_table_only else run_transfer(cfg, runs, results_path)
    wanted = {(r["key"], tuple(r["args"])) for r in runs}
    with open(results_path, encoding="utf-8") as f:
        results = [r for r in map(json.loads, f) if (r["key"], tuple(r["args"])) in wanted]
    rows = summarize_transfer(results)
    table = transfer_table(rows)
    atomic_write_text(os.path.join(cfg.transfer_dir, "transfer.md"), table)
    print(table)
    if cfg.transfer_plot:
        plot_transfer(rows, cfg.transfer_plot)
        print(f"wrote {cfg.transfer_plot}")
    if failed:
        raise TransferError(f"{len(failed)} transfer runs failed ({', '.join(failed)}); see their stdout.txt, fix, rerun")
    return [dict(benchmark=f"transfer {r['task']} N={r['n']} {r['start']}", metric=f"{split} acc %", value=r[split])
            for r in rows for split in ("dev", "test")]


# the data stage at scale (python bench.py --sections=data_scale): a crawl-like corpus of 50, 200, 800 MB built
# from the crawl sample, curated by 1 and 2 ranks: MB/s against ranks, peak memory per rank against input size

# a unit of text the generator moves: a whitespace run, up to 3 CJK characters, or a run of anything else
TEXT_UNITS = re.compile(r"\s+|[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{1,3}|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
EDGE_PUNCTUATION = "\"'()[]{}.,;:!?«»“”"


def sample_documents(path=CRAWL_SAMPLE):
    """The crawl sample as (units as an object array, positions of its content units) per document: content
    units are those that are not whitespace and not a closed-class word of any language ROOTS lists."""
    function_words = set().union(*roots_resources().stopwords.values())
    docs = []
    for text in prepare.read_sources([path], Counter()):
        units = np.array(TEXT_UNITS.findall(text), dtype=object)
        content = [i for i, u in enumerate(units) if not u.isspace() and u.strip(EDGE_PUNCTUATION).lower() not in function_words]
        docs.append((units, np.array(content, dtype=np.int64)))
    return docs


def exact_copy(text, rng):
    """A copy exact dedup must catch: whitespace, digits and ASCII punctuation changed, which its key ignores."""
    text = re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), text)
    return text.replace(". ", ".  ", 3).replace(", ", " , ", 3) + ("\n" if rng.random() < 0.5 else " !")


def near_copy(text, rng, edits=3):
    """A copy near dedup should catch: a few words replaced."""
    words = text.split(" ")
    for i in rng.integers(0, len(words), edits):
        words[i] = "edited"
    return " ".join(words)


def crawl_like_corpus(path, mb, seed=0, dup_rate=0.03, reach=3000, source=CRAWL_SAMPLE):
    """
    Write `mb` MB of crawl-like JSONL to `path`: each document is a document of the crawl sample with its content
    units shuffled (so closed-class words, punctuation, lengths and scripts stay, and copies of one source
    document do not share its word 5-grams), and with probability dup_rate each a planted exact copy or near copy
    (3 words edited, from documents of 300+ words) of one of the `reach` documents before it, so copies cross
    shard and rank boundaries. Returns the planted [(copy, original, "exact" | "near")].
    """
    docs, rng = sample_documents(source), np.random.default_rng(seed)
    recent, planted, size, index = deque(maxlen=reach), [], 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1e6:
            roll = rng.random()
            if recent and roll < dup_rate:
                original = int(rng.integers(max(0, index - reach), index))
                text = recent[original - index]
                kind = "exact" if roll < dup_rate / 2 or text.count(" ") < 300 else "near"
                text = exact_copy(text, rng) if kind == "exact" else near_copy(text, rng)
                planted.append((index, original, kind))
            else:
                units, content = docs[rng.integers(len(docs))]
                units = units.copy()
                units[content] = units[rng.permutation(content)]
                text = "".join(units)
            recent.append(text)
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            index += 1
    return planted


def curate_with_ranks(input_path, root, ranks, **overrides):
    """prepare.py on `input_path` with `ranks` processes (torchrun beyond one), as a user runs it; returns its
    report."""
    args = [os.path.join(HERE, "prepare.py"), f"--input={input_path}", "--name=scale", f"--data_root={root}",
            *(f"--{k}={v}" for k, v in overrides.items())]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable]
    run = subprocess.run(launcher + args, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    if run.returncode:
        raise DataError(f"prepare.py with {ranks} ranks failed: {run.stderr[-2000:]}")
    with open(os.path.join(root, "scale", "report.json"), encoding="utf-8") as f:
        return json.load(f)


def planted_caught(data_dir, planted):
    """(planted copies removed as duplicates, planted copies whose original was kept)."""
    with gzip.open(os.path.join(data_dir, "removed.jsonl.gz"), "rt", encoding="utf-8") as f:
        removed = {r["doc"]: r["reason"] for r in map(json.loads, f)}
    judged = [copy for copy, original, _ in planted if original not in removed]
    return sum(removed.get(copy) in ("exact_dup", "near_dup") for copy in judged), len(judged)


def bench_data_scale(cfg, system):
    """Per corpus size and number of ranks: the pipeline's MB/s per process (input MB / the run's seconds /
    ranks; the interpreter's start is left out), input MB per CPU second of the ranks (what a process does when
    it has a core to itself, however busy the machine), peak memory of the largest rank, and the planted
    duplicates it caught. The load average before each run says how busy the machine was."""
    if not os.path.exists(CRAWL_SAMPLE):
        raise DataError(f"the data_scale section builds its corpus from {CRAWL_SAMPLE}, which is absent")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in map(float, str(cfg.data_mb).split(",")):
            corpus = os.path.join(tmp, f"crawl-{mb:g}mb.jsonl")
            planted = crawl_like_corpus(corpus, mb)
            size = os.path.getsize(corpus) / 1e6
            for ranks in map(int, str(cfg.data_ranks).split(",")):
                load = os.getloadavg()[0]
                report = curate_with_ranks(corpus, tmp, ranks, lang="auto", tokenizer="gpt2", shard_mb=cfg.data_shard_mb,
                                            dedup_memory_mb=cfg.data_dedup_memory_mb)
                caught, judged = planted_caught(os.path.join(tmp, "scale"), planted)
                name = f"curate {mb:g} MB crawl-like, {ranks} rank{'s' * (ranks > 1)} (load {load:.1f})"
                rows += [dict(benchmark=name, metric="MB/s/proc", value=size / report["seconds"] / ranks),
                         dict(benchmark=name, metric="MB/CPU s", value=size / sum(report["cpu_seconds"].values())),
                         dict(benchmark=name, metric="s", value=report["seconds"]),
                         dict(benchmark=name, metric="peak MB", value=max(report["peak_rss_mb"].values())),
                         dict(benchmark=name, metric="dups %", value=100 * caught / max(judged, 1))]
                print(f"{name}: {rows[-5]['value']:.2f} MB/s per process, {rows[-2]['value']:.0f} MB peak RSS, "
                      f"{caught}/{judged} planted duplicates caught", flush=True)
    return rows


SECTIONS = {"train": bench_train, "generate": bench_generate, "mlm": bench_mlm, "nanogpt": bench_nanogpt, "sample": bench_sample,
            "tokenizers": lambda cfg, system: bench_tokenizers(), "data": bench_data,
            "data_scale": bench_data_scale, "transfer": bench_transfer}


def print_table(rows, header):
    print(header)
    width = max(len(r["benchmark"]) for r in rows)
    print(f"| {'benchmark'.ljust(width)} | {'metric':>9} | {'value':>12} |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 14}|")
    for r in rows:
        print(f"| {r['benchmark'].ljust(width)} | {r['metric']:>9} | {r['value']:>12,.2f} |")


def plot_rows(rows, path, title):
    """bench.png: one horizontal bar chart per metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(10, 1.2 + 0.5 * len(rows)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        chosen = [r for r in rows if r["metric"] == metric]
        ax.barh(range(len(chosen)), [r["value"] for r in chosen], color="tab:blue")  # by position: names may repeat
        ax.set_yticks(range(len(chosen)), [r["benchmark"] for r in chosen])
        for i, r in enumerate(chosen):
            ax.text(r["value"], i, f" {r['value']:,.1f}", va="center", fontsize=8)
        ax.set_xlabel(metric)
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def machine_description(system):
    if system.device_type == "cuda":
        return torch.cuda.get_device_name(system.device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


@script_main
def main(argv=None):
    cfg = configure(DEFAULTS, argv, default_config=os.path.join(HERE, "config", "shakespeare_char.py"))
    unknown = [name for name in cfg.sections.split(",") if name not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    small = [f"{k}={getattr(cfg, k)}" for k in ("gen_tokens", "gen_batch", "bench_iters", "batch_size", "block_size")
             if getattr(cfg, k) < (2 if k == "block_size" else 1)]
    if small or cfg.bench_warmup < 0:  # each one would time nothing, then divide by that
        raise ConfigError(f"{', '.join(small) or f'bench_warmup={cfg.bench_warmup}'}: must be at least 1 "
                          f"(block_size at least 2, bench_warmup at least 0)")
    system = train.setup_system(cfg)
    if not cfg.vocab_size:
        data_dir = dataset_dir(cfg.dataset)
        cfg.vocab_size = read_meta(data_dir)["vocab_size"] if os.path.exists(os.path.join(data_dir, "meta.json")) else 50257
    rows = []
    for name in cfg.sections.split(","):
        rows += SECTIONS[name](cfg, system)
    header = (f"nanoroots bench on {machine_description(system)}, torch {torch.__version__}, dtype {system.dtype}, "
              f"compile={cfg.compile}, {cfg.n_layer}x{cfg.n_embd}, vocab {cfg.vocab_size}")
    print_table(rows, header)
    if cfg.bench_out:
        with open(cfg.bench_out, "w") as f:
            json.dump({"machine": header, "rows": rows}, f, indent=2)
    if cfg.plot:
        plot_rows(rows, "bench.png", header)
        print("wrote bench.png")
    train.teardown(system)


if __name__ == "__main__":
    main()
