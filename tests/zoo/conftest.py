"""A local HTTP server on 127.0.0.1 for offline download tests, and weights-entry helpers."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Tuple

import pytest

from ssl_rs.zoo import WeightsEntry

# How a route answers: the whole file, the whole file without a Content-Length, half of it with
# the full Content-Length, or half with none.
MODES = ("ok", "ok_no_length", "truncate", "truncate_no_length")


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        server: "FileServer" = self.server  # type: ignore[assignment]
        server.requests[self.path] += 1
        if self.path not in server.routes:
            self.send_error(404, "Not Found")
            return
        body, mode = server.routes[self.path]
        self.send_response(200)
        if mode not in ("ok_no_length", "truncate_no_length"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # HTTP/1.0: the connection closes when the handler returns, so a short body is a cut transfer.
        self.wfile.write(body if mode.startswith("ok") else body[: len(body) // 2])

    def log_message(self, *args) -> None:  # keep test output clean
        pass


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: Dict[str, Tuple[bytes, str]] = {}
        self.requests: Counter = Counter()

    def serve(self, path: str, body: bytes, mode: str = "ok") -> str:
        assert mode in MODES
        self.routes[path] = (body, mode)
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"


@pytest.fixture
def file_server():
    server = FileServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def tiny_run(tiny_world, tmp_path_factory) -> Path:
    """A one-epoch MoCo v2 run on the tiny world (read-only: copy to modify)."""
    from ssl_rs.config import load_config, packaged_config_dir
    from ssl_rs.train import pretrain

    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(packaged_config_dir() / "synthetic" / "mocov2.yaml", [
        f"data.path={tiny_world}", f"output.dir={runs}", "data.batch_size=32", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0",
        "backbone.args.width=8", "eval.schemes=null", "method.args.queue_size=64",
    ])
    return Path(pretrain(cfg)["run_dir"])


@pytest.fixture
def ssl_rs_home(tmp_path, monkeypatch) -> Path:
    """A private weights cache: $SSL_RS_HOME -> tmp_path/home."""
    home = tmp_path / "home"
    monkeypatch.setenv("SSL_RS_HOME", str(home))
    return home


def make_entry(url: str, body: bytes, **overrides) -> WeightsEntry:
    fields = dict(
        name="test_weights", url=url, sha256=hashlib.sha256(body).hexdigest(), size=len(body),
        backbone="resnet18", bands=("B02", "B03", "B04"), method="mocov2", pretraining_data="test",
        normalization={"type": "scale", "divisor": 10000.0}, image_size=32, license="MIT",
    )
    fields.update(overrides)
    return WeightsEntry(**fields)


def files_under(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def entry_for():
    """``entry_for(url, body, **fields)``: a WeightsEntry whose sha256 and size are those of ``body``."""
    return make_entry


@pytest.fixture
def cache_files():
    """``cache_files(root)``: every file under ``root`` (relative paths), [] if it does not exist."""
    return files_under
