"""Shared test fixtures: paths to the repository and to the project's shared data."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# ../shared/data next to the checkout holds real public data (see its README); users' clones may lack it
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

needs_shared_data = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA),
    reason=f"{SHARED_DATA} is absent: these tests read real data from the project's shared folder")


def assert_real_png(path, min_side=200):
    """A PNG file with a real picture in it: the signature, a size, more than a few distinct colours."""
    import matplotlib.image
    import numpy as np
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert min(img.shape[:2]) >= min_side and len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 10


@pytest.fixture(scope="session")
def shakespeare_char(tmp_path_factory):
    """data/shakespeare_char prepared once for the whole session (tests only read it)."""
    import prepare
    root = tmp_path_factory.mktemp("data")
    prepare.main(["shakespeare_char", f"--data_root={root}"])
    return str(root / "shakespeare_char")


@pytest.fixture
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"{SHARED_DATA} is absent: this test reads real data from the project's shared folder")
    return SHARED_DATA


class FileServer:
    """
    A local HTTP server on 127.0.0.1 serving `files` ({url path: bytes}) as a good static server does
    (Content-Length, ETag, Range and If-Range), or misbehaving on purpose, one way per keyword:
      drop_after     the first response to each path is cut off after this many bytes (a flaky network)
      no_length      no Content-Length: the body ends when the connection closes, cut or not
      chunked        no Content-Length: chunked transfer encoding, whose last (empty) chunk marks the end
      no_ranges      Range is ignored: always 200 and the whole file
      wrong_range    a 206 always starts at byte 0, whatever was asked for
      gzip_encoding  "compress": the body is gzipped on the way (Content-Encoding: gzip); "label": the header
                     only, on a file that is gzip already (a misconfigured bucket); ranges ignored
      etag           False: no ETag, so nothing tells two versions of a file apart
    `files` may change between requests (server.files[path] = ...); the ETag follows the content.
    """

    def __init__(self, files, drop_after=None, no_length=False, chunked=False, no_ranges=False, wrong_range=False,
                 gzip_encoding=False, etag=True):
        import gzip
        import hashlib
        import http.server
        import threading
        server_self = self
        self.files, self.drop_after, self.requests = dict(files), drop_after, []
        self.dropped = set()

        class Handler(http.server.BaseHTTPRequestHandler):  # one response per connection
            protocol_version = "HTTP/1.1" if chunked else "HTTP/1.0"  # chunked encoding is HTTP/1.1's

            def log_message(self, *args):
                pass

            def do_GET(self):
                server_self.requests.append((self.path, self.headers.get("Range")))
                body = server_self.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                tag = '"%s"' % hashlib.sha1(body).hexdigest()[:16]
                wanted = self.headers.get("Range") and not no_ranges and not gzip_encoding
                if wanted and self.headers.get("If-Range") not in (None, tag):
                    wanted = False  # the file changed since the client's copy began: send all of it
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if wanted else 0
                if start >= len(body) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                if wrong_range and wanted:
                    start = 0
                self.send_response(206 if wanted else 200)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                chunk = gzip.compress(body, mtime=0) if gzip_encoding == "compress" else body[start:]
                if gzip_encoding:
                    self.send_header("Content-Encoding", "gzip")
                if etag:
                    self.send_header("ETag", tag)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif not no_length:
                    self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                self.close_connection = True
                cut = server_self.drop_after is not None and self.path not in server_self.dropped
                if cut:
                    server_self.dropped.add(self.path)
                    chunk = chunk[:server_self.drop_after]  # promise the whole body, send part, hang up
                if chunked:  # one chunk, then the empty chunk that ends the body, unless cut
                    chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk) + (b"" if cut else b"0\r\n\r\n")
                self.wfile.write(chunk)
                self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    servers = []

    def start(files, **misbehaviour):
        servers.append(FileServer(files, **misbehaviour))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
