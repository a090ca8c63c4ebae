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
import os
import platform
import statistics
import time

import torch

import train
from configurator import configure
from model import GPT, GPTConfig

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = dict(train.DEFAULTS) | dict(
    sections="mlm,generate",        # which benchmarks to run, comma-separated: train, mlm (clm and mlm), generate
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
    args = {k: getattr(cfg, k) for k in train.MODEL_KEYS} | {"vocab_size": cfg.vocab_size, "causal": objective == "clm"}
    torch.manual_seed(cfg.seed)
    return GPT(GPTConfig.from_dict(args)).to(system.device)


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


SECTIONS = {"train": bench_train, "generate": bench_generate, "mlm": bench_mlm}


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
        ax.barh([r["benchmark"] for r in chosen], [r["value"] for r in chosen], color="tab:blue")
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


def main(argv=None):
    cfg = configure(DEFAULTS, argv, default_config=os.path.join(HERE, "config", "shakespeare_char.py"))
    system = train.setup_system(cfg)
    if not cfg.vocab_size:
        meta_path = os.path.join(HERE, "data", cfg.dataset, "meta.json")
        cfg.vocab_size = json.load(open(meta_path))["vocab_size"] if os.path.exists(meta_path) else 50257
    rows = []
    for name in cfg.sections.split(","):
        if name not in SECTIONS:
            raise SystemExit(f"bench.py: unknown section {name!r}; choose from {', '.join(SECTIONS)}")
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
