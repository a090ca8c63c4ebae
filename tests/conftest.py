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
    """A local HTTP server on 127.0.0.1 serving `files` ({url path: bytes}) with Range support.
    `drop_after` bytes: the first full response to each path is cut off there, as a flaky network would."""

    def __init__(self, files, drop_after=None):
        import http.server
        import threading
        server_self = self
        self.files, self.drop_after, self.requests = dict(files), drop_after, []
        self.dropped = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server_self.requests.append((self.path, self.headers.get("Range")))
                body = server_self.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if server_self.drop_after is not None and self.path not in server_self.dropped:
                    server_self.dropped.add(self.path)
                    chunk = chunk[:server_self.drop_after]  # promise the whole body, send part, hang up
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

    def start(files, drop_after=None):
        servers.append(FileServer(files, drop_after))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
