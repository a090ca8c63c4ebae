"""Template lines and repeated substrings against brute-force oracles, and on the real crawl sample."""

import gzip
import json
import os
import random
from collections import Counter

import pytest

from conftest import needs_shared_data
from test_curation import CRAWL, read_jsonl_gz, run
from boilerplate import line_key, remove_repeated_substrings, remove_template_lines, repeated_spans_mask, template_keys



def brute_force_mask(texts, min_bytes):
    """A byte is covered when some span of >= min_bytes holding it, inside its document, also starts at an earlier
    position of the corpus (not crossing a document's end)."""
    docs = [t.encode() for t in texts]
    data = b"\xff".join(docs) + b"\xff"
    covered = [False] * len(data)
    start = 0
    for doc in docs:
        for s in range(start, start + len(doc)):
            for e in range(s + min_bytes, start + len(doc) + 1):
                if data.find(data[s:e]) < s:  # an earlier occurrence (find gives the first one)
                    for i in range(s, e):
                        covered[i] = True
                else:
                    break  # a longer span cannot occur earlier if this one does not
        start += len(doc) + 1
    return covered


@pytest.mark.parametrize("seed", range(5))
def test_repeated_spans_match_a_brute_force_search(seed):
    rng = random.Random(seed)
    texts = ["".join(rng.choice("ab \n") for _ in range(rng.randint(0, 40))) for _ in range(6)]
    mask, _ = repeated_spans_mask(texts, min_bytes=5)
    assert mask.tolist() == brute_force_mask(texts, 5)


def test_first_occurrence_is_kept_and_later_ones_cut():
    banner = "Jump to navigation Jump to search. Cookies help us deliver our services."  # 73 bytes
    texts = [f"Article one. {banner} Body one.", f"Article two. {banner} Body two.", "Short and unique."]
    out, removed, examples = remove_repeated_substrings(texts)
    assert out[0] == texts[0] and out[2] == texts[2]
    assert out[1] == "Article two" + "two."  # the repeat is the longest common span: ". {banner} Body "
    assert removed[1] == len(texts[1]) - len(out[1]) and examples[1] == f". {banner} Body "
    assert removed[0] == removed[2] == 0 and examples[0] == examples[2] == ""


def test_spans_shorter_than_the_minimum_stay_and_characters_are_never_split():
    x = "The river rises in the hills and flows to the sea"  # 49 ASCII bytes
    y = "Prices rose by four percent over the last quarter"  # 49 too
    texts = [f"A{x}é", f"B{x}è", f"C{y}!", f"D{y}?"]
    out, removed, _ = remove_repeated_substrings(texts, min_bytes=50)
    # x plus the first byte of é/è (both start with 0xC3) repeat: 50 bytes, the last of them half a character
    assert out[1] == "Bè" and removed[1] == 49
    assert out[3] == texts[3] and removed[3] == 0  # 49 bytes repeat: under the minimum
    assert out[0] == texts[0] and out[2] == texts[2]


def test_template_lines_need_ten_occurrences_and_fifteen_characters():
    menu, footer, short = "Home | About us | Contact", "Copyright 2020 Example Ltd", "Share"
    docs = [f"{menu}\nreal text {i}\n{short}" for i in range(10)] + [f"{footer}\ntext {i}" for i in range(9)]
    counts = Counter(k for d in docs for k in template_keys(d))
    templates = {k for k, n in counts.items() if n >= 10}
    assert templates == {line_key(menu)}
    text, removed = remove_template_lines(docs[0], templates)
    assert text == "real text 0\nShare" and removed == [menu]
    assert remove_template_lines(docs[-1], templates) == (docs[-1], [])


# --- in the pipeline, on the real crawl sample ----------------------------------------------------------------

@needs_shared_data
def test_crawl_boilerplate_is_cut_and_every_record_keeps_its_source(tmp_path, shared_data):
    banner = "Jump to navigation Jump to search"
    crawl = os.path.join(shared_data, CRAWL)
    _, plain = run(tmp_path / "plain", input=crawl, lang="auto", keep_text=True, template_lines=False, substring_dedup=False)
    assert sum(banner in k["text"] for k in read_jsonl_gz(plain / "clean.jsonl.gz")) >= 10  # Wikipedia-like pages
    _, out = run(tmp_path / "cut", input=crawl, lang="auto", keep_text=True)
    kept, removed = read_jsonl_gz(out / "clean.jsonl.gz"), read_jsonl_gz(out / "removed.jsonl.gz")
    assert not any(banner in k["text"] for k in kept)
    report = json.load(open(out / "report.json"))
    stages = {s["stage"]: s for s in report["stages"]}
    for stage in ("templates", "substrings"):
        cut = report["boilerplate"][stage]
        assert cut["bytes_cut"] > 5000 and len(cut["examples"]) == 3
        assert stages[stage]["bytes_in"] - stages[stage]["bytes_out"] == cut["bytes_cut"]
    assert report["kept"]["bytes"] == sum(len(k["text"].encode()) for k in kept)
    # every document keeps the other fields of its input record (id, url inside "metadata", ...)
    with gzip.open(crawl, "rt", encoding="utf-8") as f:
        ids = [json.loads(line)["id"] for line in f]
    assert all(r["meta"]["id"] == ids[r["doc"]] for r in kept + removed)
    assert len(kept) + len(removed) == len(ids)
    examples = [e for v in report["removed"].values() for e in v["examples"]]
    assert examples and all(e["id"] == ids[e["doc"]] for e in examples)
    assert f"[id `{ids[examples[0]['doc']]}`" in open(out / "report.md", encoding="utf-8").read()
