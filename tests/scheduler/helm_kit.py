"""Helpers shared by the tests that run the real helm without a cluster (test_task_helm.py, test_task_commands.py).

Imported as `helm_kit` (tests/scheduler is on sys.path; see store_kit.py for why there is no package).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def kubeconfig(folder: Path, server: str) -> Path:
    """A kubeconfig in `folder` naming one cluster at `server` (with a token no cluster accepts)."""
    path = folder / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- cluster: {{server: '{server}'}}\n  name: c\n"
        "contexts:\n- context: {cluster: c, user: u}\n  name: c\n"
        "current-context: c\nusers:\n- name: u\n  user: {token: not-a-real-token}\n"
    )
    return path


class _NoReleases(BaseHTTPRequestHandler):
    """A Kubernetes API that answers /version and lists no Secrets (where Helm keeps its releases)."""

    def do_GET(self) -> None:
        if self.path.startswith("/version"):
            body: dict[str, object] = {"major": "1", "minor": "30", "gitVersion": "v1.30.0"}
        elif "/secrets" in self.path:
            body = {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def cluster_without_releases() -> Iterator[str]:
    """The URL of a stand-in API server holding no Helm release: the real helm says `release: not found`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoReleases)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
