import json
import os

import bench

from conftest import ROOT, assert_real_png


def test_bench_prints_a_table_and_plots_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bench.main(["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--bench_iters=2",
                "--bench_warmup=1", "--gen_tokens=8", "--vocab_size=70", "--threads=1", "--plot", f"--bench_out={tmp_path / 'b.json'}"])
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    names = {r["benchmark"] for r in rows}
    assert any("train mlm" in n for n in names) and any("train clm" in n for n in names) and "generate: KV cache speed-up" in names
    assert any("--safe=True" in n for n in names) and any(n.startswith("safe: time per step") for n in names)
    assert "generate: encoder-decoder / GPT tokens/s" in names
    assert all(r["value"] > 0 for r in rows) and "| benchmark" in out
    assert_real_png(tmp_path / "bench.png")


def test_bench_data_section_reports_every_stage(shared_data, capsys):
    rows = bench.bench_data(None, None)
    stages = [r["benchmark"].rsplit(": ", 1)[1] for r in rows]
    assert stages == ["read", "clean", "lang", "filters", "exact_dedup", "near_dedup", "pii", "tokenize",
                      "clean", "lang", "filters", "html"]
    assert "Chinese Wikipedia" in rows[-2]["benchmark"] and "HTML pages" in rows[-1]["benchmark"]
    assert all(r["metric"] == "MB/s" and r["value"] > 0 for r in rows)


def test_data_stage_throughput_gives_mb_per_s_for_each_stage():
    rows = bench.data_stage_throughput(os.path.join(ROOT, "tests", "fixtures", "curation_docs.jsonl"))
    stages = [r["stage"] for r in rows]
    assert stages[:7] == ["read", "clean", "lang", "filters", "exact_dedup", "near_dedup", "pii"] and "tokenize" in stages
    assert all(r["seconds"] > 0 for r in rows) and all(r["mb_per_s"] > 0 for r in rows if r["stage"] != "dedup_decision")
