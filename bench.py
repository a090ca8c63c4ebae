"""
Performance numbers: training throughput and MFU, generation with and without the KV cache (a GPT's
and an encoder-decoder's), masked-LM next to causal-LM training. Prints a table; numbers go in the
README with the machine.

    python bench.py                                  # the default config (config/shakespeare_char.py)
    python bench.py config/gpt2.py --batch_size=16 --compile=True --sections=train
    python bench.py --plot                           # also draw bench.png

Timings take the median of several measured steps after warm-up steps (compilation, allocator
growth and caches settle there). When two variants are compared, they are measured in one run.
"""

import json
import os
import platform
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch

import prepare
import train
from configurator import ConfigError, configure, script_main
from dataset import SHARED_DATA, DataError, dataset_dir, read_meta
from safety import SafeGeneration, flagged_word_masks, prompt_language
from tokenizer import build_tokenizer, gpt2_tokenizer, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = dict(train.DEFAULTS) | dict(
    sections="mlm,generate",        # comma-separated: train, mlm (clm next to mlm), generate, tokenizers, data
    vocab_size=0,                   # model vocabulary; 0 = the dataset's tokenizer, or GPT-2's 50257 without data
    bench_iters=10,                 # measured steps
    bench_warmup=3,                 # unmeasured steps first
    gen_tokens=200,                 # tokens generated per generation benchmark
    gen_batch=1,
    plot=False,                     # write bench.png
    bench_out="",                   # also write the rows as JSON here
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


SECTIONS = {"train": bench_train, "generate": bench_generate, "mlm": bench_mlm,
            "tokenizers": lambda cfg, system: bench_tokenizers(), "data": bench_data}


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
