"""Servers on 127.0.0.1 for tests: any ASGI app under uvicorn in a thread, and ``auralsam2 serve``'s
app that way with a token and media roots. Nothing here is a test."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from pathlib import Path

import uvicorn

from auralsam2_core.model_spec import ModelSpec
from auralsam2_core.serving.engines import RemoteEngine
from auralsam2_service.app import create_app
from auralsam2_service.config import ServiceSettings
from auralsam2_service.job_service import JobService

TOKEN = "service-test-token-abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UvicornThread:
    """An ASGI app under uvicorn on a free 127.0.0.1 port, in a thread (a context manager)."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class ServiceThread(UvicornThread):
    def __init__(self, state_dir: Path, roots: list[Path], model=None, **settings) -> None:
        self.settings = ServiceSettings(token=TOKEN, media_roots=tuple(r.resolve()
                                                                       for r in roots),
                                        state_dir=state_dir, **settings)
        self.service = JobService(self.settings, ModelSpec(), model=model)
        super().__init__(create_app(self.service))

    def engine(self) -> RemoteEngine:
        return RemoteEngine(self.url, TOKEN, poll=0.05)

    def env(self) -> dict[str, str]:
        return {"AURALSAM2_SERVER_URL": self.url, "AURALSAM2_SERVER_TOKEN": TOKEN}


def _read_what_arrived(sock: socket.socket) -> bytes:
    """Whatever the peer sent before it reset the connection (Linux keeps received data
    readable after a reset; an empty result means nothing came)."""
    got = b""
    with contextlib.suppress(OSError):
        while select.select([sock], [], [], 0.5)[0]:
            part = sock.recv(1 << 16)
            if not part:
                break
            got += part
    return got


def stream_chunked(port: int, path: str, headers: dict[str, str], total: int,
                   chunk: int = 64 << 10, give_up_s: float = 120.0) -> tuple[int, bytes]:
    """POST ``total`` bytes of body to 127.0.0.1:``port`` in chunked encoding (no
    Content-Length), watching for the answer between writes. Returns (body bytes written
    when the answer came or the server closed the connection, the answer's first bytes): a
    server that stops reading at its limit answers long before ``total`` is written."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
    sock.sendall(head.encode())
    sock.setblocking(False)
    frame = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    pending, sent, answer = memoryview(b""), 0, b""
    deadline = time.monotonic() + give_up_s
    try:
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                answer = _read_what_arrived(sock)
                break  # an answer, or the connection closed
            if writable:
                if not pending:
                    pending = memoryview(frame)
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    # The server closed while we were still sending (urllib3 does the same:
                    # it reads the answer): the 413 the server sent first may be waiting unread.
                    answer = _read_what_arrived(sock)
                    break
                pending, sent = pending[n:], sent + n
        if not answer and sent >= total:  # everything went: finish the body, read the answer
            sock.setblocking(True)
            sock.settimeout(give_up_s)
            try:
                sock.sendall(b"0\r\n\r\n")
                answer = sock.recv(1 << 16)
            except OSError:
                pass
    finally:
        sock.close()
    return sent, answer
