"""
Performance numbers: training throughput and MFU, generation with and without the KV cache,
masked-LM next to causal-LM training. Prints a table; numbers go in the README with the machine.

    python bench.py                                  # the default config (config/shakespeare_char.py)
    python bench.py config/gpt2.py --batch_size=16 --compile=True --sections=train
    python bench.py --plot                           # also draw bench.png

Timings take the median of several measured steps after warm-up steps (compilation, allocator
growth and caches settle there). When two variants are compared, they are measured in one run.
"""

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from types import SimpleNamespace

import torch

import finetune
import prepare
import train
from configurator import ConfigError, NanorootsError, configure, script_main
from dataset import SHARED_DATA, DataError, atomic_write_text, dataset_dir, in_val_split, read_meta
from tokenizer import build_tokenizer, gpt2_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = dict(train.DEFAULTS) | dict(
    sections="mlm,generate",        # comma-separated: train, mlm (clm next to mlm), generate, tokenizers, data, transfer
    vocab_size=0,                   # model vocabulary; 0 = the dataset's tokenizer, or GPT-2's 50257 without data
    bench_iters=10,                 # measured steps
    bench_warmup=3,                 # unmeasured steps first
    gen_tokens=200,                 # tokens generated per generation benchmark
    gen_batch=1,
    plot=False,                     # write bench.png
    bench_out="",                   # also write the rows as JSON here
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
    optimizer = raw.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), system.device_type)
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
    return rows


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
                poems += [prepare.poem_text(p) for p in json.load(f)]
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
                shift = 1.04 ** (i - (len(starts) - 1) / 2)  # side by side at each N, so the error bars stay apart
                ax.errorbar([r["n"] * shift for r in line], [r[split] for r in line], yerr=[r[f"{split}_std"] for r in line],
                            marker="o", capsize=3, label=start)
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


SECTIONS = {"train": bench_train, "generate": bench_generate, "mlm": bench_mlm,
            "tokenizers": lambda cfg, system: bench_tokenizers(), "data": bench_data, "transfer": bench_transfer}


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
