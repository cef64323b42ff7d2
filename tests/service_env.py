"""Servers on 127.0.0.1 for tests: any ASGI app under uvicorn in a thread, and ``auralsam2 serve``'s
app that way with a token and media roots. Nothing here is a test."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from auralsam2_core.model_env import ServedModel
from auralsam2_core.remote import RemoteEngine
from auralsam2_service.app import create_app
from auralsam2_service.config import ServiceSettings
from auralsam2_service.jobs import Service

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
        self.service = Service(self.settings, ServedModel(), model=model)
        super().__init__(create_app(self.service))

    def engine(self) -> RemoteEngine:
        return RemoteEngine(self.url, TOKEN, poll=0.05)

    def env(self) -> dict[str, str]:
        return {"AURALSAM2_SERVER_URL": self.url, "AURALSAM2_SERVER_TOKEN": TOKEN}
