"""
Reading documents: text files, JSON lines and arrays, folders, WARC archives and Parquet files, each as a stream of
documents. A reader yields strings (a `Text` when its input record has other fields, which travel with the
document); `stats` counts what was skipped or repaired, so nothing is dropped silently.
"""

import codecs
import gzip
import json
import os
import re
import stat
import zlib

from dataset import DataError, need


def decode_utf8(raw, stats):
    """UTF-8 with invalid bytes replaced by U+FFFD, and counted."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats["invalid_utf8_docs"] += 1
        stats["invalid_utf8_chars"] += text.count("\ufffd") - raw.count("\ufffd".encode())
        return text


class Text(str):
    """A document's text carrying the other fields of its input record (`meta`: id, url, any other field), which
    travel with it into clean.jsonl.gz, removed.jsonl.gz and the report's examples (ROOTS kept every document's
    source metadata; a kept document must be traceable to its origin)."""

    def __new__(cls, text, meta):
        doc = super().__new__(cls, text)
        doc.meta = meta
        return doc


def with_meta(text, record, text_field):
    """text as a Text holding every other field of its record, or plain text when there are none."""
    meta = {k: v for k, v in record.items() if k != text_field}
    return Text(text, meta) if meta else text


SURROGATES = re.compile("[\ud800-\udfff]")


def _looks_binary(path):
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def read_text_file(path, stats, max_doc_bytes):
    """A text file is one document; a file over max_doc_bytes becomes several, cut at line ends."""
    if _looks_binary(path):
        raise DataError(f"{path} looks like a binary file (it has NUL bytes); give a text or .jsonl file")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    invalid, pieces, carry = 0, 0, ""
    with open(path, "rb") as f:
        block = f.read(max_doc_bytes)
        while True:
            after = f.read(max_doc_bytes) if block else b""
            decoded = decoder.decode(block, final=not after)
            invalid += decoded.count("\ufffd") - block.count("\ufffd".encode())
            text = carry + decoded
            if not after:
                break
            cut = text.rfind("\n") + 1 or len(text)  # a single huge line is cut where the block ends
            carry, pieces = text[cut:], pieces + 1
            yield text[:cut]
            block = after
    if text:
        pieces += 1
        yield text
    if pieces > 1:
        stats["large_file_pieces"] += pieces
    if invalid:
        stats["invalid_utf8_docs"] += 1
        stats["invalid_utf8_chars"] += invalid


def read_jsonl(path, stats, text_field, max_doc_bytes):
    """One document per line; bad JSON, a missing field and over-long lines are skipped and counted."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line in iter(lambda: f.readline(max_doc_bytes + 1), b""):
            if len(line) > max_doc_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # skip the rest without holding it
                    line = f.readline(max_doc_bytes)
                stats["skipped_too_long"] += 1
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(decode_utf8(line, stats))
            except json.JSONDecodeError:
                stats["skipped_bad_json"] += 1
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                stats["skipped_no_text_field"] += 1
                continue
            if SURROGATES.search(text):  # JSON can hold lone surrogates, which UTF-8 cannot: replaced, counted
                text, n = SURROGATES.subn("\ufffd", text)
                stats["lone_surrogates"] += n
            yield with_meta(text, record, text_field)


def poem_text(record):
    """A chinese-poetry record as a readable document: its title, author, then one couplet per line."""
    return "\n".join([record.get("title", ""), record.get("author", ""), *record["paragraphs"]])


def read_json_array(path, stats, text_field, max_doc_bytes):
    """A .json file holding an array of records: each record's `text_field` (or a poem) is a document."""
    if os.path.getsize(path) > max_doc_bytes:
        raise DataError(f"{path} is over max_doc_mb as one JSON array; convert it to .jsonl (one record per line)")
    with open(path, "rb") as f:
        try:
            records = json.loads(decode_utf8(f.read(), stats))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); give a JSON array of records, or .jsonl") from None
    if not isinstance(records, list):
        raise DataError(f"{path} holds a JSON {type(records).__name__}, not an array of records; give .jsonl or a JSON array")
    for record in records:
        if isinstance(record, dict) and isinstance(record.get(text_field), str):
            text = record[text_field]
        elif isinstance(record, dict) and isinstance(record.get("paragraphs"), list):
            text = poem_text(record)
        else:
            stats["skipped_no_text_field"] += 1
            continue
        if SURROGATES.search(text):  # as in read_jsonl: lone surrogates cannot be UTF-8; replaced, counted
            text, n = SURROGATES.subn("\ufffd", text)
            stats["lone_surrogates"] += n
        yield with_meta(text, record, text_field) if text_field in record else text


def read_warc(path, stats, max_doc_bytes):
    """Web archives (.warc, .warc.gz), streamed: each HTML response is a document (curation's html stage then
    keeps its main text), each WET conversion record (text/plain) too; other records are skipped and counted."""
    warc = need("fastwarc.warc", "fastwarc", f"reading {path}")
    kinds = warc.WarcRecordType.response | warc.WarcRecordType.conversion
    for record in warc.ArchiveIterator(path, record_types=kinds, parse_http=True, fsspec_args=False):
        if record.record_type == warc.WarcRecordType.response and "html" not in (record.http_content_type or ""):
            stats["skipped_warc_not_html"] += 1
            continue
        body = record.reader.read(max_doc_bytes + 1)
        if len(body) > max_doc_bytes:
            stats["skipped_too_long"] += 1
            continue
        charset = record.http_charset if record.record_type == warc.WarcRecordType.response else None
        text = body.decode(charset, errors="replace") if charset and charset.lower() not in ("utf-8", "utf8") else decode_utf8(body, stats)
        yield Text(text, {"id": record.record_id, "url": record.headers.get("WARC-Target-URI")})


def read_parquet(path, stats, text_field):
    """A Parquet file (C4, FineWeb, The Stack on the Hugging Face hub), streamed in row batches; one document per
    row, from the `text_field` column. Empty and non-text cells are skipped and counted."""
    parquet = need("pyarrow.parquet", "pyarrow", f"reading {path}")
    table = parquet.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
        raise DataError(f"{path} has no column {text_field!r}; its columns are {', '.join(table.schema_arrow.names)}: "
                        f"choose one with --text_field")
    for batch in table.iter_batches(batch_size=1024):  # every column: the others are the document's metadata
        for record in batch.to_pylist():
            text = record[text_field]
            if isinstance(text, bytes):
                text = decode_utf8(text, stats)
            if not isinstance(text, str):
                stats["skipped_no_text_field"] += 1
                continue
            yield with_meta(text, record, text_field)


def _is_jsonl(path):
    return path.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson"))


def folder_files(folder, stats):
    """The regular files in a folder tree, sorted. A symlink that leads outside the folder (to /etc/passwd,
    say) is not followed into the training data, nor is a dangling one; a FIFO, socket or device is never
    opened (reading a FIFO waits forever). Each is skipped and counted."""
    root = os.path.realpath(folder) + os.sep
    files = []
    for path in sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names):
        if os.path.islink(path) and not os.path.exists(path):
            stats["skipped_dangling_symlinks"] += 1
        elif os.path.islink(path) and not os.path.realpath(path).startswith(root):
            stats["skipped_symlinks_outside_folder"] += 1
        elif not stat.S_ISREG(os.stat(path).st_mode):
            stats["skipped_not_regular_files"] += 1
        else:
            files.append(path)
    return files


def _whole_gzip(path, docs):
    """The documents of a reader of `path`; a .gz cut short, or not gzip at all, is a one-line error naming it."""
    try:
        yield from docs
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path} is not a complete gzip file ({e}); download or copy it again") from None


def _has_reader(path):
    """Formats read by a reader of their own (binary ones included), not as text."""
    return _is_jsonl(path) or path.endswith((".warc", ".warc.gz", ".parquet"))


def read_path(path, stats, text_field="text", max_doc_bytes=64 << 20):
    if os.path.isdir(path):
        files = folder_files(path, stats)
        if not files:
            raise DataError(f"folder {path} has no files")
        for file in files:
            if not _has_reader(file) and _looks_binary(file):
                stats["skipped_binary_files"] += 1
                continue
            yield from read_path(file, stats, text_field, max_doc_bytes)
    elif not os.path.exists(path):
        raise DataError(f"input {path} " + ("is a symlink to a file that does not exist" if os.path.islink(path) else "does not exist"))
    elif not os.path.isfile(path):
        raise DataError(f"input {path} is not a regular file (a FIFO, socket or device); give a file or a folder")
    elif _is_jsonl(path):
        yield from _whole_gzip(path, read_jsonl(path, stats, text_field, max_doc_bytes))
    elif path.endswith((".warc", ".warc.gz")):
        yield from read_warc(path, stats, max_doc_bytes)
    elif path.endswith(".parquet"):
        yield from read_parquet(path, stats, text_field)
    elif path.endswith(".json"):
        yield from read_json_array(path, stats, text_field, max_doc_bytes)
    else:
        yield from read_text_file(path, stats, max_doc_bytes)


def read_labelled_lines(path, stats):
    """(label, text) from lines `<label> <text>` (SST-2's `1 a stirring , funny ...`, TREC's `LOC:city
    Which city ...`). Invalid UTF-8 is replaced and counted; lines without text are skipped and counted."""
    if not os.path.exists(path):
        raise DataError(f"input {path} does not exist")
    with open(path, "rb") as f:
        for raw in f:
            label, _, text = decode_utf8(raw, stats).strip().partition(" ")
            if not text.strip():
                stats["skipped_no_text"] += bool(label)
                continue
            yield label, text.strip()


def read_lines(path, stats):
    """Every non-empty line of a text file is one document (e.g. one Wikipedia article per line)."""
    if not os.path.exists(path):
        raise DataError(f"input {path} does not exist")
    with open(path, "rb") as f:
        for raw in f:
            line = decode_utf8(raw, stats).strip()
            if line:
                yield line
