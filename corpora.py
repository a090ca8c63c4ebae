"""
The sources of prepare.py's `crawl_en` and `english` recipes (all the English training text in
../shared/data, for the transfer-learning experiments) and the reader of Alpaca records as plain text.
"""

import json
import os

from dataset import SHARED_DATA, DataError, in_val_split
from readers import decode_utf8


CRAWL_FILES = [os.path.join(SHARED_DATA, "web_crawl_sample", f) for f in (
    "CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz", "dolma_ccnet_head/cc_en_head-0091.jsonl",
    "dolma_ccnet_head/cc_en_head-0174.jsonl")]
ALPACA_EN = os.path.join(SHARED_DATA, "instruction_tuning", "alpaca_en_demo.json")
# finetune.py's sft holds out the records in_val_split(i, val_fraction=0.05, seed) picks; the `english`
# recipe leaves out the ones held out under these seeds (the config default and the next two), so an
# sft run with any of them is scored on instructions its pretrained model never read
SFT_HELD_OUT = dict(val_fraction=0.05, seeds=(1337, 1338, 1339))


def english_input(cfg):
    """The `english` recipe's sources; the curated crawl must have been prepared first."""
    crawl = os.path.join(cfg.data_root, "crawl_en", "clean.jsonl.gz")
    if not os.path.exists(crawl):
        raise DataError(f"{crawl} not found: run `python prepare.py crawl_en` first (the curated English crawl)")
    return [f"labelled:{SHARED_DATA}/sst2/stsa.binary.train", f"labelled:{SHARED_DATA}/trec/TREC.train",
            f"{SHARED_DATA}/clean_text_sample/c4_demo.jsonl", f"lines:{SHARED_DATA}/clean_text_sample/wiki_demo.txt",
            f"instructions:{ALPACA_EN}", crawl]


def read_instructions(path, stats):
    """An Alpaca-format JSON array as plain text, one document per record: instruction, input and
    output separated by blank lines, without the prompt template. Records that finetune.py's sft
    holds out (SFT_HELD_OUT) are skipped and counted, so its held-out loss is on unseen text."""
    if not os.path.exists(path):
        raise DataError(f"input {path} does not exist")
    with open(path, "rb") as f:
        records = json.loads(decode_utf8(f.read(), stats))
    for i, record in enumerate(records):
        if any(in_val_split(i, SFT_HELD_OUT["val_fraction"], seed) for seed in SFT_HELD_OUT["seeds"]):
            stats["sft_held_out_skipped"] += 1
            continue
        parts = [record.get(k) for k in ("instruction", "input", "output")] if isinstance(record, dict) else []
        text = "\n\n".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
        if not text:
            stats["skipped_no_text"] += 1
            continue
        yield text
