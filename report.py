"""
The data stage's report of every decision curation took: report.json (every number), report.md (for people,
with plots/*.png): documents and bytes in and out of each stage, removals by reason with examples, the
values each filter saw per language against its thresholds, languages, duplicate clusters, PII counts,
throughput and memory per rank. prepare.py builds it from curate.py's tally.
"""

import json
import os

import numpy as np

from curate import (EMPTIED, FILTERS, HIST_EDGES, REASON_STAGE, SOURCE_FIELDS, filter_bounds, params_for,
                    perplexity_settings, roots_resources)
from pii import redact_pii
from dataset import atomic_write_text

# the config keys (prepare.py's) that decide curation, recorded in the report
CURATION_KEYS = ("curate", "lang", "lang_id", "lang_id_model", "html", "clean", "nfc", "filters", "char_rep_k",
                 "short_circuit", "ppl_model", "ppl_max", "dedup", "near_dedup", "minhash_bands", "minhash_rows", "template_lines", "substring_dedup", "pii",
                 "pii_phone", "keep_text")

STAGES = ("read", "html", "clean", "lang", "filters", "exact_dedup", "near_dedup", "pii", "templates", "substrings")
FILTER_TITLES = {"words": "number of words", "char_rep": "character n-gram repetition ratio",
                 "word_rep": "word n-gram repetition ratio", "special": "special-character ratio",
                 "closed_class": "closed-class word ratio", "flagged": "flagged-word ratio", "ppl": "perplexity"}


def build_report(cfg, out_dir, source, world, tally, clusters, cluster_text, counts, stats, seconds):
    """Everything the report shows, as plain JSON-able data. clusters: (how many near-duplicate clusters, the
    largest as [kept doc, removed docs...])."""
    res = roots_resources()
    stages, docs, size = [], tally.docs["read"], tally.bytes["read"]
    for stage in STAGES:  # documents and bytes in and out of each stage, derived from the removals and changes
        reasons = [r for r, s in REASON_STAGE.items() if s == stage]
        docs_out = docs - sum(tally.docs["removed:" + r] for r in reasons)
        size_out = size - sum(tally.bytes["removed:" + r] for r in reasons) + tally.bytes["changed:" + stage]
        stages.append({"stage": stage, "docs_in": docs, "docs_out": docs_out, "bytes_in": size, "bytes_out": size_out})
        docs, size = docs_out, size_out
    throughput = [{"stage": stage, "seconds": round(tally.seconds[stage], 6),
                   "mb_per_s": round(tally.work[stage] / tally.seconds[stage] / 1e6, 3) if tally.work[stage] else None}
                  for stage in (*STAGES, "dedup_decision", "tokenize") if tally.seconds[stage]]
    langs = sorted({lang for _, lang in tally.hist}, key=lambda l: -tally.langs[l])
    models, ppl_max = perplexity_settings(cfg)
    ppl = {l: (ppl_max.get(l, ppl_max.get("*", 0.0)), l in models or "*" in models) for l in langs}
    filters = []
    for name in FILTERS:
        checked = sum(int(c.sum()) for (f, _), c in tally.hist.items() if f == name)
        if checked:
            filters.append({"filter": name, "checked": checked, "removed": tally.docs["removed:" + name],
                            "bytes_removed": tally.bytes["removed:" + name],
                            "bounds": {l: filter_bounds(res, l, *ppl[l]).get(name) for l in langs
                                       if (name, l) in tally.hist}})
    removed = {reason: {"stage": REASON_STAGE[reason], "docs": tally.docs["removed:" + reason],
                        "bytes": tally.bytes["removed:" + reason], "examples": tally.examples[reason]}
               for reason in REASON_STAGE if tally.docs["removed:" + reason]}
    return {
        "name": os.path.basename(out_dir), "source": source, "ranks": world, "seconds": round(seconds, 2),
        "config": {k: getattr(cfg, k) for k in CURATION_KEYS + ("tokenizer",)},
        "kept": {"docs": stages[-1]["docs_out"], "bytes": stages[-1]["bytes_out"]},
        "stages": stages, "throughput": throughput, "removed": removed, "filters": filters,
        "histograms": {name: {"edges": HIST_EDGES[name].tolist(),
                              "counts": {l: tally.hist[(name, l)].tolist() for l in langs if (name, l) in tally.hist}}
                       for name in FILTERS if any(f == name for f, _ in tally.hist)},
        "html": {"pages": tally.docs["html_pages"], "bytes_changed": tally.bytes["changed:html"],
                 "removed": tally.docs["removed:html_empty"], "examples": tally.html_examples},
        "languages": {l: {"docs": n, "kept": tally.docs["kept:" + l],
                          "min_score": params_for(res, l)["lang_id_min_cutoff"]} for l, n in tally.langs.most_common()},
        "duplicates": {"exact_removed": tally.docs["removed:exact_dup"], "near_removed": tally.docs["removed:near_dup"],
                       "near_clusters": clusters[0],
                       "largest_clusters": [{"size": len(c), "kept": c[0], "removed": c[1:11], "text": cluster_text.get(c[0], "")}
                                            for c in clusters[1][:5]]},
        "pii": {"spans": dict(tally.pii), "docs": tally.docs["pii_docs"]},
        "boilerplate": {stage: {"bytes_cut": -tally.bytes["changed:" + stage], "docs_emptied": tally.docs["removed:" + EMPTIED[stage]],
                                "examples": tally.cut_examples[stage]} for stage in ("templates", "substrings")},
        "peak_rss_mb": tally.peak_rss_mb, "cpu_seconds": tally.cpu_seconds,
        "input_stats": dict(stats), "output": counts,
    }


def plot_report(report, plot_dir):
    """plots/filter_<name>.png: the values each filter saw, per language, with its thresholds as dashed lines;
    plots/removals.png: documents removed per reason. Returns {plot name: file name}."""
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    os.makedirs(plot_dir, exist_ok=True)
    written = {}
    bounds = {f["filter"]: f["bounds"] for f in report["filters"]}
    for name, hist in report["histograms"].items():
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        edges = np.array(hist["edges"])
        for i, (lang, counts) in enumerate(list(hist["counts"].items())[:4]):  # the most frequent languages
            ax.stairs(counts, edges, label=lang, color=f"C{i}", fill=i == 0, alpha=0.6 if i == 0 else 1)
            for bound in bounds.get(name, {}).get(lang) or ():
                if bound is not None:
                    ax.axvline(bound, color=f"C{i}", linestyle="--", linewidth=1.5)
        if name in ("words", "ppl"):
            ax.set_xscale("log")
        ax.set(title=f"{name}: {FILTER_TITLES[name]} (dashed: thresholds)", xlabel=FILTER_TITLES[name], ylabel="documents")
        ax.legend(title="language")
        fig.tight_layout()
        fig.savefig(os.path.join(plot_dir, f"filter_{name}.png"), dpi=90)
        plt.close(fig)
        written[name] = f"filter_{name}.png"
    if report["removed"]:
        reasons = list(report["removed"])
        fig, ax = plt.subplots(figsize=(6.4, max(3.2, 0.45 * len(reasons) + 1.2)))
        ax.barh(reasons, [report["removed"][r]["docs"] for r in reasons], color="C3")
        ax.invert_yaxis()
        ax.set(title="documents removed, by reason", xlabel="documents")
        fig.tight_layout()
        fig.savefig(os.path.join(plot_dir, "removals.png"), dpi=90)
        plt.close(fig)
        written["removals"] = "removals.png"
    return written


def md_table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def examples_markdown(removed, fmt):
    out = ["## Examples of removed documents\n",
           "The first three of each reason, after cleaning, PII redacted, cut at 300 characters; every removal is "
           "listed in `removed.jsonl.gz`.\n"]
    for reason, v in removed.items():
        out.append(f"### {reason}\n")
        for e in v["examples"]:
            values = ", ".join(f"{k}={fmt(x)}" for k, x in e["values"].items())
            text = e["text"].replace("```", "'''") if e["text"].strip() else "(nothing but whitespace)"
            out.append(f"doc {e['doc']}{source(e)} ({e['lang']}): {values or '-'}\n\n```\n{text}\n```\n")
    return out


def source(example):
    """Where an example came from: its input record's id and url, when the input had them."""
    fields = [f"{k} `{example[k]}`" for k in SOURCE_FIELDS if k in example]
    return f" [{', '.join(fields)}]" if fields else ""


def boilerplate_markdown(r, mb):
    t, s = r["boilerplate"]["templates"], r["boilerplate"]["substrings"]
    out = ["## Boilerplate\n",
           f"Template lines (ROOTS' `dedup_template_soft`: lines of 15+ characters seen 10+ times in a shard): {mb(t['bytes_cut'])} MB "
           f"cut, {t['docs_emptied']} documents left empty and removed. Repeated substrings (Lee et al. 2022: spans of 50+ "
           f"bytes that occurred earlier in the shard, first occurrence kept): {mb(s['bytes_cut'])} MB cut, "
           f"{s['docs_emptied']} documents left empty and removed. The scope of both is one shard of `shard_mb` MB of input.\n"]
    for name, v in (("template lines", t), ("repeated substrings", s)):
        for e in v["examples"]:
            cut = e["cut"].replace("```", "'''")
            out.append(f"{name} cut from doc {e['doc']}{source(e)} ({e['lang']}):\n\n```\n{cut}\n```\n")
    return out


def html_and_languages_markdown(r, mb):
    out = []
    h = r["html"]
    out += ["## HTML\n", f"{h['pages']} documents were HTML pages: their main text replaced them ({mb(-h['bytes_changed'])} MB "
            f"of markup and boilerplate dropped); {h['removed']} had no main text (`html_empty`).\n"]
    for e in h["examples"]:
        out.append(f"doc {e['doc']} ({e['lang']}), page:\n\n```\n{e['page']}\n```\n\nkept:\n\n```\n{e['text']}\n```\n")
    identifier = f"fastText `{r['config']['lang_id_model']}`" if r["config"]["lang_id_model"] else "py3langid"
    out += ["## Languages\n", f"Identified by {identifier} on the cleaned, lower-cased text (its first 2,000 characters); "
            "a document is kept when its language is wanted and the probability reaches the language's minimum "
            "(ROOTS' `lang_id_min_cutoff`; 0.7 for languages ROOTS had no table for).\n",
            md_table(["language", "docs", "kept", "min score"], [[l, v["docs"], v["kept"], v["min_score"]] for l, v in r["languages"].items()])]
    return out


def report_markdown(r, plots):
    pct = lambda part, whole: f"{100 * part / whole:.1f}%" if whole else "-"  # noqa: E731
    mb = lambda b: f"{b / 1e6:,.3f}"  # noqa: E731
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    read = r["stages"][0]
    out = [f"# Data report: {r['name']}\n",
           f"Source `{r['source']}`; lang `{r['config']['lang']}`, tokenizer `{r['config']['tokenizer']}`, "
           f"{r['ranks']} rank(s), {r['seconds']:.1f} s.\n",
           f"**Kept {r['kept']['docs']:,} of {read['docs_in']:,} documents ({pct(r['kept']['docs'], read['docs_in'])}), "
           f"{mb(r['kept']['bytes'])} of {mb(read['bytes_in'])} MB.**\n",
           "## Stages\n",
           "Documents flow top to bottom; MB are UTF-8 text. HTML extraction, cleaning and PII redaction change bytes.\n",
           md_table(["stage", "docs in", "docs out", "removed", "MB in", "MB out"],
                    [[s["stage"], s["docs_in"], s["docs_out"], pct(s["docs_in"] - s["docs_out"], s["docs_in"]),
                      mb(s["bytes_in"]), mb(s["bytes_out"])] for s in r["stages"]]),
           "## Removals by reason\n"]
    if "removals" in plots:
        out.append(f"![documents removed by reason](plots/{plots['removals']})\n")
    out.append(md_table(["reason", "stage", "docs", "% of read", "MB"],
                        [[k, v["stage"], v["docs"], pct(v["docs"], read["docs_in"]), mb(v["bytes"])] for k, v in r["removed"].items()]))
    out += ["## Filters\n",
            "ROOTS' filters in ROOTS' order, with the thresholds of `data/roots/parameters_filtering.json` for each "
            "document's language (bounds inclusive). " + ("A document is removed by the first filter it fails and is not "
            "checked further, so each filter sees the documents that passed the ones above it.\n" if r["config"]["short_circuit"]
            else "Every filter value is computed for every document; the reason is the first filter failed.\n"),
            md_table(["filter", "keep when (per language)", "checked", "removed", "% removed", "MB removed"],
                     [[f["filter"], "; ".join(f"{l}: " + " ".join(s for s in (f"≥ {fmt(b[0])}" if b and b[0] is not None else "",
                                                                              f"≤ {fmt(b[1])}" if b and b[1] is not None else "") if s) or f"{l}: recorded"
                                              for l, b in list(f["bounds"].items())[:4]),
                       f["checked"], f["removed"], pct(f["removed"], f["checked"]), mb(f["bytes_removed"])] for f in r["filters"]])]
    for name, file in plots.items():
        if name != "removals":
            out.append(f"![{name}](plots/{file})\n")
    out += html_and_languages_markdown(r, mb)
    d = r["duplicates"]
    out += ["## Duplicates\n",
            f"Exact duplicates removed: {d['exact_removed']}. Near-duplicates removed: {d['near_removed']}, "
            f"in {d['near_clusters']} clusters (MinHash LSH, {r['config']['minhash_bands']} bands x "
            f"{r['config']['minhash_rows']} rows; the first document of each cluster is kept).\n"]
    if d["largest_clusters"]:
        out.append(md_table(["size", "kept doc", "removed docs", "kept text"],
                            [[c["size"], c["kept"], ", ".join(map(str, c["removed"])),
                              c["text"][:80].replace("\n", " ").replace("|", "/")] for c in d["largest_clusters"]]))
    out += boilerplate_markdown(r, mb)
    out += ["## PII\n", f"Spans redacted in the kept documents ({r['pii']['docs']} documents had some):\n",
            md_table(["kind", "spans"], sorted(r["pii"]["spans"].items())) if r["pii"]["spans"] else "None found.\n",
            "## Throughput\n", "MB of input to each stage per second of one process (all ranks' seconds added).\n",
            md_table(["stage", "seconds", "MB/s per process"], [[t["stage"], f"{t['seconds']:.2f}", t["mb_per_s"] or "-"] for t in r["throughput"]]),
            "Peak memory (RSS) per rank: " + ", ".join(f"rank {k}: {v:,.0f} MB" for k, v in sorted(r["peak_rss_mb"].items())) + ".\n"]
    out += examples_markdown(r["removed"], fmt)
    o = r["output"]
    if o:
        out += ["## Output\n", f"train.bin {o['train_tokens']:,} tokens ({o['train_docs']} docs), val.bin {o['val_tokens']:,} "
                f"tokens ({o['val_docs']} docs), {o['dtype']}; meta.json, removed.jsonl.gz"
                + (", clean.jsonl.gz" if r["config"]["keep_text"] else "") + ".\n"]
    return "\n".join(out)


def write_report(out_dir, report):
    """report.json, plots/*.png and report.md; example texts are PII-redacted first when pii is on."""
    if report["config"]["pii"]:
        for e in [e for v in report["boilerplate"].values() for e in v["examples"]]:
            e["cut"] = redact_pii(e["cut"])[0]
        for e in [e for v in report["removed"].values() for e in v["examples"]] + report["html"]["examples"]:
            e["text"] = redact_pii(e["text"])[0]
            if "page" in e:
                e["page"] = redact_pii(e["page"])[0]
    plots = plot_report(report, os.path.join(out_dir, "plots"))
    atomic_write_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1, ensure_ascii=False))
    atomic_write_text(os.path.join(out_dir, "report.md"), report_markdown(report, plots))

