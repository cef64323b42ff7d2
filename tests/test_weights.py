"""Registry, cache dir and the resumable, checksummed downloader against a loopback server."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auralsam2_core.modeling import weights
from auralsam2_core.modeling.weights import (
    REGISTRY,
    DownloadError,
    WeightFile,
    cache_dir,
    download,
    fetch,
    sha256_file,
)

MB = 1 << 20


class Server:
    """Serves files from ``root``; records each request's Range header and bytes sent."""

    def __init__(self, root: Path):
        self.root = root
        self.ignore_range = False  # answer 200 + whole file even when asked for a range
        self.cut_after: int | None = None  # send only this many body bytes, then hang up
        self.requests: list[dict] = []
        self.sent = 0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                srv.requests.append({"path": self.path, "range": rng})
                f = srv.root / self.path.lstrip("/")
                if not f.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = f.read_bytes()
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not srv.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = data[start:]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if srv.cut_after is not None:
                    body = body[: srv.cut_after]
                self.wfile.write(body)
                srv.sent += len(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    s = Server(root)
    yield s
    s.close()


@pytest.fixture
def blob(server):
    """A 3 MiB file on the server: (name, bytes, sha256)."""
    data = os.urandom(3 * MB + 123)
    (server.root / "w.pth").write_bytes(data)
    return "w.pth", data, hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("AURALSAM2_HOME", str(h))
    return h


# --------------------------------------------------------------------------- download


def test_full_download_verifies_sha256(server, blob, tmp_path):
    name, data, digest = blob
    dest = tmp_path / "out" / name
    assert download(server.url(name), dest, sha256=digest, progress=False) == dest
    assert dest.read_bytes() == data
    assert not dest.with_name(name + ".part").exists()
    assert server.requests == [{"path": "/w.pth", "range": None}]
    assert sha256_file(dest) == digest


def test_progress_bar_does_not_break_download(server, blob, tmp_path, capsys):
    name, data, digest = blob
    dest = download(server.url(name), tmp_path / name, sha256=digest, progress=True)
    assert dest.read_bytes() == data


def test_resume_sends_range_and_transfers_only_the_rest(server, blob, tmp_path):
    name, data, digest = blob
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(data[:MB])
    download(server.url(name), dest, sha256=digest, progress=False)
    assert dest.read_bytes() == data
    assert server.requests[-1]["range"] == f"bytes={MB}-"
    assert server.sent == len(data) - MB


def test_server_ignoring_range_restarts_cleanly(server, blob, tmp_path):
    name, data, digest = blob
    server.ignore_range = True
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(b"\0" * MB)  # wrong bytes: must not survive
    download(server.url(name), dest, sha256=digest, progress=False)
    assert server.requests[-1]["range"] == f"bytes={MB}-"
    assert server.sent == len(data)
    assert dest.read_bytes() == data


def test_interrupted_download_keeps_part_and_resumes(server, blob, tmp_path):
    name, data, digest = blob
    dest = tmp_path / name
    part = dest.with_name(name + ".part")
    server.cut_after = MB + 7
    with pytest.raises(DownloadError, match="short read") as ei:
        download(server.url(name), dest, sha256=digest, progress=False)
    assert server.url(name) in str(ei.value)
    assert part.stat().st_size == MB + 7 and not dest.exists()

    server.cut_after = None
    download(server.url(name), dest, sha256=digest, progress=False)
    assert server.requests[-1]["range"] == f"bytes={MB + 7}-"
    assert dest.read_bytes() == data and not part.exists()


def test_complete_part_with_416_restarts(server, blob, tmp_path):
    name, data, digest = blob
    dest = tmp_path / name
    dest.with_name(name + ".part").write_bytes(data + b"extra")
    download(server.url(name), dest, sha256=digest, progress=False)
    assert dest.read_bytes() == data


def test_checksum_mismatch_raises_and_leaves_nothing(server, blob, tmp_path):
    name, _, digest = blob
    dest = tmp_path / name
    wrong = "ab" * 32
    with pytest.raises(DownloadError) as ei:
        download(server.url(name), dest, sha256=wrong, progress=False)
    msg = str(ei.value)
    assert wrong in msg and digest in msg and server.url(name) in msg
    assert not dest.exists()
    assert not dest.with_name(name + ".part").exists()


def test_sha256_prefix(server, blob, tmp_path):
    name, data, digest = blob
    dest = download(server.url(name), tmp_path / "a" / name, sha256_prefix=digest[:8].upper(),
                    progress=False)
    assert dest.read_bytes() == data
    with pytest.raises(DownloadError, match=f"starting with 00000000, got {digest}"):
        download(server.url(name), tmp_path / "b" / name, sha256_prefix="00000000",
                 progress=False)
    assert not (tmp_path / "b" / name).exists()


def test_existing_verified_file_is_not_downloaded_again(server, blob, tmp_path):
    name, data, digest = blob
    dest = tmp_path / name
    dest.write_bytes(data)
    download(server.url(name), dest, sha256=digest, progress=False)
    assert server.requests == []
    dest.write_bytes(b"corrupt")  # a bad file in place is replaced
    download(server.url(name), dest, sha256=digest, progress=False)
    assert dest.read_bytes() == data


def test_http_404_names_the_url(server, tmp_path):
    url = server.url("nope.pth")
    with pytest.raises(DownloadError, match="404") as ei:
        download(url, tmp_path / "nope.pth", progress=False)
    assert url in str(ei.value)
    assert not (tmp_path / "nope.pth").exists()


def test_unreachable_host_is_a_download_error(tmp_path, server):
    url = server.url("x.pth")
    server.close()
    with pytest.raises(DownloadError, match="could not download"):
        download(url, tmp_path / "x.pth", progress=False, timeout=5)


# --------------------------------------------------------------------------- cache / fetch


def test_cache_dir_env_and_default(home, tmp_path, monkeypatch):
    assert cache_dir() == home and home.is_dir()
    monkeypatch.delenv("AURALSAM2_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_dir() == tmp_path / "user" / ".cache" / "auralsam2"
    assert cache_dir().is_dir()


def test_fetch_registry_entry_downloads_once(server, blob, home, monkeypatch):
    name, data, digest = blob
    entry = WeightFile("tiny_test", server.url(name), "vggish", sha256_prefix=digest[:8])
    monkeypatch.setitem(REGISTRY, "tiny_test", entry)
    path = fetch("tiny_test", progress=False)
    assert path == home / name and path.read_bytes() == data
    assert fetch("tiny_test", progress=False) == path
    assert fetch(name, progress=False) == path  # by file name too
    assert len(server.requests) == 1


def test_fetch_registry_404_says_where_to_put_the_file(server, home, monkeypatch):
    entry = WeightFile("gone", server.url("gone.pth"), "auralsam2_fuser")
    monkeypatch.setitem(REGISTRY, "gone", entry)
    with pytest.raises(DownloadError) as ei:
        fetch("gone", progress=False)
    assert server.url("gone.pth") in str(ei.value) and str(home / "gone.pth") in str(ei.value)


def test_fetch_url_goes_to_cache(server, blob, home):
    name, data, _ = blob
    path = fetch(server.url(name), progress=False)
    assert path == home / name and path.read_bytes() == data
    fetch(server.url(name), progress=False)
    assert len(server.requests) == 1


def test_fetch_local_path_as_is_and_missing_path(tmp_path):
    f = tmp_path / "mine.pth"
    f.write_bytes(b"x")
    assert fetch(f) == f
    assert fetch(str(f)) == f
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        fetch(missing)


# --------------------------------------------------------------------------- registry


def test_registry_contents():
    fusers = {k for k, w in REGISTRY.items() if w.kind.startswith("auralsam2_")}
    assert fusers == {"auralsam2_avs_v1s", "auralsam2_avs_v1m", "auralsam2_avs_v2",
                      "auralsam2_refavs_best"}
    assert REGISTRY["auralsam2_refavs_best"].kind == "auralsam2_refavs_fuser"
    for k in fusers:
        w = REGISTRY[k]
        assert w.url == f"https://huggingface.co/yyliu01/AuralSAM2/resolve/main/ckpts/{k}.pth"
        assert w.filename == f"{k}.pth" and w.pairs_with in REGISTRY
    v = REGISTRY["vggish"]
    assert v.filename == "vggish-10086976.pth" and v.sha256_prefix == "10086976"
    assert REGISTRY["sam2_hiera_base_plus"].url.endswith("/072824/sam2_hiera_base_plus.pt")
    assert REGISTRY["sam2.1_hiera_large"].url.endswith("/092824/sam2.1_hiera_large.pt")
    assert all(w.name == k for k, w in REGISTRY.items())
    assert all(w.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", w.sha256)
               for w in REGISTRY.values())


def test_sam2_configs_exist_in_sam2_package():
    spec = importlib.util.find_spec("sam2")
    assert spec is not None and spec.submodule_search_locations
    pkg = Path(next(iter(spec.submodule_search_locations)))
    sam2 = [w for w in REGISTRY.values() if w.kind == "sam2"]
    assert len(sam2) == 8
    for w in sam2:
        assert w.sam2_config and (pkg / w.sam2_config).is_file(), w.sam2_config
    assert REGISTRY["sam2.1_hiera_base_plus"].sam2_config == "configs/sam2.1/sam2.1_hiera_b+.yaml"


def test_module_exports():
    assert set(weights.__all__) <= set(dir(weights))
