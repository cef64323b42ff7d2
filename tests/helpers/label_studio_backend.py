"""What the Label Studio backend's tests without a Label Studio server share: basic-auth
credentials (a password with a colon), the project's labelling config, and an HTTP server that
stands in for Label Studio or a storage host and records what it was asked."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "label-studio", "s3cret-pass:with-colon"
CONFIG = (ROOT / "plugins/label_studio/templates/video_sounding.xml").read_text()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD = basic(USER, PASSWORD)


class RecordingServer:
    """Stands in for Label Studio (or a storage host): answers every GET with ``answer(path)``
    and records (path, Authorization header) of each request it saw."""

    def __init__(self, answer) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                seen.append((self.path, self.headers.get("Authorization")))
                code, headers, body = answer(self.path)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
