"""
dataset.download against a local server that misbehaves on purpose, one way per test (conftest.FileServer):
a transfer cut short with or without a length, a stale .part of an older version of the file, a .part longer
than the file, a 206 from the wrong place, a gzip transfer encoding, two URLs with one file name, an
upper-case sha256, a cached file that does not parse. In each the result is the server's file, byte for
byte, or a one-line DataError; never a file that is not whole.
"""

import gzip
import hashlib
import json
from collections import Counter

import pytest

import hf
from dataset import DataError, download, download_path
from prepare import read_sources
from test_interop import gpt2_tensors, write_gpt2_folder

BODY = bytes(range(256)) * 40  # 10,240 bytes, no two 256-byte blocks alike in position


def fetch(server, path, dest, **kw):
    return download(server.url + path, str(dest), progress=False, **kw)


def test_cut_transfer_without_a_length_is_continued_not_taken_as_whole(tmp_path, file_server):
    server = file_server({"/f.txt": BODY}, no_length=True, drop_after=3000)
    fetch(server, "/f.txt", tmp_path / "f.txt")
    assert (tmp_path / "f.txt").read_bytes() == BODY
    # the body ended at 3,000 bytes with nothing saying it was whole: asking for byte 3,000 on found more
    assert [r for _, r in server.requests][:2] == [None, "bytes=3000-"]


def test_server_without_length_or_ranges_needs_a_sha256(tmp_path, file_server):
    server = file_server({"/f.txt": BODY}, no_length=True, no_ranges=True)
    with pytest.raises(DataError, match="without a length by a server that does not answer range requests"):
        fetch(server, "/f.txt", tmp_path / "f.txt", retries=0)
    assert not (tmp_path / "f.txt").exists()
    fetch(server, "/f.txt", tmp_path / "f.txt", sha256=hashlib.sha256(BODY).hexdigest())  # the hash proves it whole
    assert (tmp_path / "f.txt").read_bytes() == BODY


def test_stale_part_of_an_older_version_is_not_spliced(tmp_path, file_server):
    old, new = BODY, BODY[::-1]  # same length, other bytes: only the ETag tells them apart
    server = file_server({"/f.txt": old}, drop_after=4000)
    with pytest.raises(DataError, match="after 1 tries"):
        fetch(server, "/f.txt", tmp_path / "f.txt", retries=0)
    assert (tmp_path / "f.txt.part").read_bytes() == old[:4000]
    server.files["/f.txt"] = new
    fetch(server, "/f.txt", tmp_path / "f.txt")
    assert (tmp_path / "f.txt").read_bytes() == new
    assert server.requests[-1][1] == "bytes=4000-"  # it asked to continue, with If-Range: the server sent the new file whole


def test_part_without_a_validator_starts_again_from_zero(tmp_path, file_server):
    server = file_server({"/f.txt": BODY}, etag=False)
    (tmp_path / "f.txt.part").write_bytes(BODY[::-1][:4000])  # left by a run against an older version of the file
    fetch(server, "/f.txt", tmp_path / "f.txt")
    assert (tmp_path / "f.txt").read_bytes() == BODY
    assert [r for _, r in server.requests] == [None]  # nothing proves the remote unchanged: no Range, all of it


def test_part_longer_than_the_file_416_starts_again(tmp_path, file_server):
    server = file_server({"/f.txt": BODY})
    url, dest = server.url + "/f.txt", tmp_path / "f.txt"
    (tmp_path / "f.txt.part").write_bytes(b"x" * (len(BODY) + 500))  # from a longer, older version
    tag = '"%s"' % hashlib.sha1(BODY).hexdigest()[:16]  # a server that checks Range before If-Range answers 416
    (tmp_path / "f.txt.part.json").write_text(json.dumps({"url": url, "size": len(BODY) + 500, "etag": tag}))
    download(url, str(dest), progress=False)
    assert dest.read_bytes() == BODY
    assert [r for _, r in server.requests] == [f"bytes={len(BODY) + 500}-", None]


def test_206_from_the_wrong_place_does_not_duplicate_bytes(tmp_path, file_server):
    server = file_server({"/f.txt": BODY}, drop_after=3000, wrong_range=True)
    fetch(server, "/f.txt", tmp_path / "f.txt")
    assert (tmp_path / "f.txt").read_bytes() == BODY
    assert [r for _, r in server.requests] == [None, "bytes=3000-", None]  # the bad 206 was refused, then from zero


def test_same_file_name_from_two_urls_are_two_files(tmp_path, file_server):
    server = file_server({"/en/part-0.txt": b"english text", "/fr/part-0.txt": b"texte francais"})
    urls = [server.url + "/en/part-0.txt", server.url + "/fr/part-0.txt"]
    assert download_path(urls[0], "d") != download_path(urls[1], "d") and download_path(urls[0], "d").endswith("-part-0.txt")
    docs = list(read_sources(urls, Counter(), download_dir=str(tmp_path)))
    assert docs == ["english text", "texte francais"]
    assert list(read_sources(urls[::-1], Counter(), download_dir=str(tmp_path))) == docs[::-1]  # cached, each its own


def test_sha256_in_upper_case_is_the_same_hash(tmp_path, file_server):
    server = file_server({"/f.txt": BODY})
    digest = hashlib.sha256(BODY).hexdigest().upper()
    fetch(server, "/f.txt", tmp_path / "f.txt", sha256=digest)
    fetch(server, "/f.txt", tmp_path / "f.txt", sha256=f" {digest} ")
    assert (tmp_path / "f.txt").read_bytes() == BODY and len(server.requests) == 1  # the second call used the cache
    with pytest.raises(DataError, match="is not 64 hexadecimal digits"):
        fetch(server, "/f.txt", tmp_path / "f.txt", sha256="abc")


@pytest.mark.parametrize("encoding", ["label", "compress"])
def test_gzip_transfer_encoding_on_a_jsonl_gz(tmp_path, file_server, encoding):
    """A bucket that labels a .gz file Content-Encoding: gzip, or a server that gzips it again on the way:
    either way the file on disk is the .jsonl.gz, and it reads."""
    lines = "\n".join(json.dumps({"text": f"document {i}"}) for i in range(5)).encode()
    server = file_server({"/c.jsonl.gz": gzip.compress(lines)}, gzip_encoding=encoding)
    docs = list(read_sources([server.url + "/c.jsonl.gz"], Counter(), download_dir=str(tmp_path)))
    assert docs == [f"document {i}" for i in range(5)]


def test_gzip_transfer_encoding_on_plain_text_is_undone(tmp_path, file_server):
    server = file_server({"/a.txt": BODY}, gzip_encoding="compress")
    fetch(server, "/a.txt", tmp_path / "a.txt", sha256=hashlib.sha256(BODY).hexdigest())
    assert (tmp_path / "a.txt").read_bytes() == BODY


def test_cached_file_that_does_not_parse_is_fetched_again(tmp_path, file_server, monkeypatch):
    """A config.json cut short and cached (with a record that matched its short length) by an older version:
    the next load_pretrained fetches it again instead of saying "download it again" forever."""
    src = tmp_path / "src"
    write_gpt2_folder(src, gpt2_tensors(n_layer=1, n_embd=16, vocab=96, prefix=""), n_layer=1, n_embd=16, vocab=96)
    files = {f"/gpt2-medium/resolve/main/{n}": (src / n).read_bytes() for n in ("config.json", "model.safetensors")}
    server = file_server(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("NANOROOTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NANOROOTS_MIRROR", raising=False)
    hf.load_pretrained("gpt2-medium")
    config = tmp_path / "cache" / "hf" / "gpt2-medium" / "config.json"
    config.write_bytes(config.read_bytes()[:40])
    record = json.loads((tmp_path / "cache" / "hf" / "gpt2-medium" / "config.json.download.json").read_text())
    config.with_name("config.json.download.json").write_text(json.dumps(record | {"size": 40}))
    n = len(server.requests)
    checkpoint = hf.load_pretrained("gpt2-medium")
    assert config.read_bytes() == files["/gpt2-medium/resolve/main/config.json"] and checkpoint["model_args"]["n_layer"] == 1
    assert [p for p, _ in server.requests[n:]] == ["/gpt2-medium/resolve/main/config.json"]  # the weights came from the cache


def test_chunked_transfer_cut_before_its_last_chunk_is_fetched_again(tmp_path, file_server):
    server = file_server({"/f.txt": BODY}, chunked=True, drop_after=3000)
    fetch(server, "/f.txt", tmp_path / "f.txt")
    assert (tmp_path / "f.txt").read_bytes() == BODY
    assert [r for _, r in server.requests] == [None, None]  # no length was known, so it began again from zero
