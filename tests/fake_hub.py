"""A Hugging Face Hub stand-in on localhost (HF_ENDPOINT): serves one repo's files the way huggingface_hub reads
them (HEAD/GET .../resolve/<rev>/<file> with X-Repo-Commit and ETag; GET /api/models/<repo>/revision/<rev> and .../tree/<rev>),
and records each request's Authorization header."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def fake_hub(
    repo_id: str, source: Path, commit: str = "f" * 40, repo_type: str = "model"
) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    files = {f.name: f.read_bytes() for f in source.iterdir() if f.is_file()}
    seen: list[tuple[str, str]] = []  # (path, Authorization header)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, body: bytes, headers: dict[str, str], send_body: bool) -> None:
            self.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _serve(self, send_body: bool) -> None:
            seen.append((self.path, self.headers.get("Authorization", "")))
            path = self.path.split("?", 1)[0]
            kind = f"{repo_type}s"  # models | datasets
            api = f"/api/{kind}/{repo_id}/revision/"
            resolve = f"/{repo_id}/resolve/" if repo_type == "model" else f"/{kind}/{repo_id}/resolve/"
            if path.startswith(f"/api/{kind}/{repo_id}/tree/"):
                tree = [
                    {"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for n, b in files.items()
                ]
                self._reply(json.dumps(tree).encode(), {"Content-Type": "application/json"}, send_body)
            elif path.startswith(api):
                siblings = [{"rfilename": n, "size": len(b)} for n, b in files.items()]
                body = json.dumps({"id": repo_id, "sha": commit, "siblings": siblings}).encode()
                self._reply(body, {"Content-Type": "application/json"}, send_body)
            elif path.startswith(resolve) and path.rsplit("/", 1)[-1] in files:
                body = files[path.rsplit("/", 1)[-1]]
                etag = hashlib.sha256(body).hexdigest()
                self._reply(body, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, send_body)
            elif path.startswith(
                f"/api/{kind}/"
            ):  # another repo: what the Hub answers for unknown or private
                self.send_response(401)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
            self._serve(send_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(send_body=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
