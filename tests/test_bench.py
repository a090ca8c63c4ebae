import json
import os

import bench

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
