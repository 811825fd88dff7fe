"""A fake Hugging Face Hub on loopback: the endpoints `huggingface_hub.snapshot_download` and
`hf_hub_download` call, serving local folders as model repos.

Point huggingface_hub at it with `HF_ENDPOINT=<hub.url>` (in a subprocess, so the variable is
read at import). Served: `GET /api/models/{repo}[/revision/{rev}]` (model info: `sha`,
`siblings`), `GET /api/models/{repo}/tree/{rev}` (the recursive file listing) and
`HEAD|GET /{repo}/resolve/{rev}/{path}` with the headers huggingface_hub checks (`X-Repo-Commit`,
`ETag` / `X-Linked-Etag`, `Content-Length`, `X-Linked-Size`) and `Range` for resumed downloads.
Unknown repos, revisions and files get the hub's `X-Error-Code` answers. `cut_once` names files
whose first download stops halfway (the connection drops), to prove a pull resumes.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<what>revision|tree)/(?P<rev>[^/]+))?")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class FakeHub:
    """Repos (id -> local folder) served at `url`; every request is recorded in `requests` as
    (method, path, Range header or "")."""

    repos: dict[str, Path]
    url: str = ""
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    cut_once: set[str] = field(default_factory=set)

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def commit(self, repo: str) -> str:
        digest = hashlib.sha1(repo.encode())
        for name, path in self.files(repo).items():
            digest.update(name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".pth"))


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _send(self, status: int, data: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)

        def _json(self, value: Any) -> None:
            self._send(200, json.dumps(value).encode(), Content_Type="application/json")

        def _error(self, status: int, code: str, **headers: str) -> None:
            self._send(status, json.dumps({"error": code}).encode(), X_Error_Code=code, **headers)

        def _answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range", "")))
            match = _API.match(path) or _RESOLVE.match(path)
            if match is None:
                return self._error(404, "EntryNotFound")
            repo = match["repo"]
            if repo not in hub.repos:
                return self._error(401, "RepoNotFound")
            commit = hub.commit(repo)
            if match["rev"] not in (None, "main", commit):
                return self._error(404, "RevisionNotFound")
            files = hub.files(repo)
            if match.re is _API and match["what"] == "tree":
                return self._json([self._entry(name, p) for name, p in files.items()])
            if match.re is _API:
                siblings = [{"rfilename": name} for name in files]
                return self._json({"id": repo, "sha": commit, "siblings": siblings})
            if match["path"] not in files:
                return self._error(404, "EntryNotFound", X_Repo_Commit=commit)
            self._file(match["path"], files[match["path"]].read_bytes(), commit)

        def _entry(self, name: str, path: Path) -> dict[str, Any]:
            data = path.read_bytes()
            entry: dict[str, Any] = {"type": "file", "oid": _blob_id(data), "size": len(data)}
            if _is_lfs(name):
                lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
                entry["lfs"] = {**lfs, "pointerSize": 134}
            return {**entry, "path": name}

        def _file(self, name: str, data: bytes, commit: str) -> None:
            etag = hashlib.sha256(data).hexdigest() if _is_lfs(name) else _blob_id(data)
            headers = {"X_Repo_Commit": commit, "ETag": f'"{etag}"'}
            if _is_lfs(name):
                headers |= {"X_Linked_Etag": f'"{etag}"', "X_Linked_Size": str(len(data))}
            start = 0
            ranged = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if ranged and self.command == "GET":
                start = int(ranged[1])
                headers["Content_Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if self.command == "GET" and name in hub.cut_once:
                hub.cut_once.discard(name)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(206 if start else 200, data[start:], **headers)

    return Handler


@contextmanager
def fake_hub(repos: dict[str, Path]) -> Iterator[FakeHub]:
    """Serve `repos` on loopback for the block; the hub's `url` is its HF_ENDPOINT."""
    hub = FakeHub(repos)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
