import json
import os

import bench
import pytest

from conftest import ROOT, assert_real_png


def test_bench_prints_a_table_and_plots_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bench.main(["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--bench_iters=2",
                "--bench_warmup=1", "--gen_tokens=8", "--vocab_size=70", "--threads=1", "--plot", f"--bench_out={tmp_path / 'b.json'}",
                "--sections=mlm,generate,nanogpt"])
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    names = {r["benchmark"] for r in rows}
    assert any("train mlm" in n for n in names) and any("train clm" in n for n in names) and "generate: KV cache speed-up" in names
    assert any("--safe=True" in n for n in names) and any(n.startswith("safe: time per step") for n in names)
    baby = [r for r in rows if "nanoGPT's baby config" in r["benchmark"]]
    assert [r["benchmark"].rsplit(", ", 1)[1] for r in baby] == ["adamw", "muon"] and all(r["metric"] == "ms/iter" for r in baby)
    assert "generate: encoder-decoder / GPT tokens/s" in names
    assert all(r["value"] > 0 for r in rows) and "| benchmark" in out
    assert_real_png(tmp_path / "bench.png")


def test_bench_sample_section_times_the_whole_process_and_the_first_token():
    cfg = bench.configure(bench.DEFAULTS, ["--sample_new_tokens=5", "--sample_runs=1", "--threads=1"], verbose=False)
    rows = bench.bench_sample(cfg, bench.train.setup_system(cfg))
    values = {r["benchmark"].rsplit(": ", 1)[1]: (r["metric"], r["value"]) for r in rows}
    assert set(values) == {"whole process, 5 tokens", "python + imports", "load checkpoint + first token", "generation, batch 1"}
    assert [m for m, _ in values.values()] == ["s", "s", "ms", "tokens/s"] and all(v > 0 for _, v in values.values())
    assert "10.6M" in rows[0]["benchmark"] or "10.7M" in rows[0]["benchmark"]  # nanoGPT's 6x384 Shakespeare model


def test_bench_data_section_reports_every_stage(shared_data, capsys):
    rows = bench.bench_data(None, None)
    stages = [r["benchmark"].rsplit(": ", 1)[1] for r in rows]
    assert stages == ["read", "clean", "lang", "filters", "exact_dedup", "near_dedup", "pii", "templates", "substrings",
                      "tokenize", "clean", "lang", "filters", "html"]
    assert "Chinese Wikipedia" in rows[-2]["benchmark"] and "HTML pages" in rows[-1]["benchmark"]
    assert all(r["metric"] == "MB/s" and r["value"] > 0 for r in rows)


def test_data_stage_throughput_gives_mb_per_s_for_each_stage():
    rows = bench.data_stage_throughput(os.path.join(ROOT, "tests", "fixtures", "curation_docs.jsonl"))
    stages = [r["stage"] for r in rows]
    assert stages[:7] == ["read", "clean", "lang", "filters", "exact_dedup", "near_dedup", "pii"] and "tokenize" in stages
    assert all(r["seconds"] > 0 for r in rows) and all(r["mb_per_s"] > 0 for r in rows if r["stage"] != "dedup_decision")


def test_transfer_summary_and_table_give_mean_and_std_over_seeds():
    results = [dict(task="sst2", start=start, size="100", n=100, seed=s, dev_acc=dev, test_acc=dev - 0.01, cpu_s=60.0)
               for start, devs in (("scratch", (0.50, 0.60, 0.70)), ("MLM", (0.70, 0.70, 0.70))) for s, dev in enumerate(devs)]
    rows = {r["start"]: r for r in bench.summarize_transfer(results)}
    assert rows["scratch"]["dev"] == pytest.approx(60.0) and rows["scratch"]["dev_std"] == pytest.approx(10.0)
    assert rows["MLM"]["test"] == pytest.approx(69.0) and rows["MLM"]["test_std"] == pytest.approx(0.0, abs=1e-9)
    assert rows["MLM"]["seeds"] == 3 and rows["MLM"]["cpu_s"] == 60.0
    table = bench.transfer_table(list(rows.values()))
    assert "| sst2 | 100 | 60.0 ± 10.0 | 59.0 ± 10.0 | 70.0 ± 0.0 | 69.0 ± 0.0 |" in table
    assert "| all | all | 6.0 |" in table  # six runs of one CPU-minute


def test_transfer_section_runs_each_seed_once_and_resumes(tmp_path, shared_data, capsys):
    out = tmp_path / "transfer"
    args = ["--sections=transfer", "--transfer_tasks=trec", "--transfer_sizes=30", "--transfer_seeds=1,2",
            "--transfer_starts=tiny: --init_from=scratch --tokenizer=gpt2 --causal=False --block_size=64 --n_layer=1 "
            "--n_head=2 --n_embd=16", "--transfer_step_scale=1", "--transfer_evals=2", f"--transfer_dir={out}",
            f"--transfer_plot={tmp_path / 'transfer.png'}", "--threads=1", f"--bench_out={tmp_path / 'b.json'}"]
    bench.main(args)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in results) == [1, 2] and all(r["n"] == 30 and r["steps"] == 5 for r in results)
    for r in results:  # the dev accuracy of the checkpoint that dev chose, and test measured once on it
        log = [json.loads(line) for line in (out / r["key"] / "log.jsonl").read_text().splitlines()]
        evals = [e for e in log if "val_acc" in e]
        assert r["dev_acc"] == max(e["val_acc"] for e in evals[1:]) and len([e for e in log if "test_acc" in e]) == 1
        assert 0 < r["test_acc"] < 1 and r["cpu_s"] > 0 and not any(f.startswith("ckpt") for f in os.listdir(out / r["key"]))
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["metric"] for r in rows] == ["dev acc %", "test acc %"] and "| trec | 30 |" in (out / "transfer.md").read_text()
    assert_real_png(tmp_path / "transfer.png")
    capsys.readouterr()
    bench.main(args)  # a rerun finds every run in results.jsonl
    assert "2 runs, 2 already in" in capsys.readouterr().out
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    seed1 = next(r for r in results if r["seed"] == 1)
    bench.main(args + ["--transfer_seeds=1,3", "--transfer_table_only=True"])  # the table of what ran; runs nothing
    assert not (out / "trec_tiny_n30_s3").exists() and "transfer:" not in capsys.readouterr().out
    assert [line for line in (out / "transfer.md").read_text().splitlines() if line.startswith("| trec | 30 |")] == \
        [f"| trec | 30 | {100 * seed1['dev_acc']:.1f} (1 seed) | {100 * seed1['test_acc']:.1f} (1 seed) |"]
