"""Servers on 127.0.0.1 for the remote-checkpoint tests (and benchmarks/bench_remote.py).

- :class:`RangeServer`: files of a folder over HTTP/1.1 with ``Range`` support (206, Content-Range,
  HEAD with Content-Length, Accept-Ranges), counting the body bytes it served, with faults to inject
  once or always per path: ``404``, ``403``, ``503`` (status answers), ``drop`` (the connection closed
  after half of a body), ``ignore-range`` (a 200 with the whole body announced), ``stall`` (no answer
  for ``stall_s`` seconds), ``pass`` (none: to let earlier requests through); ``max_active`` is the
  most GET bodies it sent at once; ``swaps`` replaces a file by another one mid-read.
- :class:`HubStub`: the two Hugging Face Hub endpoints pinit uses (``HF_ENDPOINT``): the tree listing
  ``/api/{models,datasets}/ORG/REPO/tree/REV[/PATH]`` and the file URLs ``/ORG/REPO/resolve/REV/PATH``
  (with ranges), over a folder ``ROOT/ORG/REPO/...``; repositories named in ``private`` need the token.
- :func:`moto_server`: moto's S3 server mode on 127.0.0.1 (a random port).

Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

CHUNK = 1 << 20


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.root = root
        self.bytes_served = 0
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.faults: dict[str, list[str]] = {}  # path -> faults, each used once (first first)
        self.always: dict[str, str] = {}  # path -> a fault on every request
        self.private: dict[str, str] = {}  # HubStub: repo -> the token it needs
        self.delay = 0.0  # seconds before each body (to see requests overlap)
        self.stall_s = 2.0  # the "stall" fault: this long before any answer
        self.lock = threading.Lock()
        self.swaps: dict[str, tuple[int, Path]] = {}  # path -> (offset, file): replaced by that file
        # (os.replace, once) when a GET asks for a range starting at or after the offset
        self.active = 0  # GET requests being answered now
        self.max_active = 0  # the most at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client gone (a timeout test): printed, it would land in a later command's captured stderr

    def count(self, n: int) -> None:
        with self.lock:
            self.bytes_served += n

    def take_fault(self, path: str) -> str | None:
        with self.lock:
            if path in self.always:
                return self.always[path]
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None


class _RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    server: _Server
    answered = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _route(self) -> tuple[str, Path | None]:
        """The request's path (for faults) and the file it names (None: a 404)."""
        path = unquote(urlsplit(self.path).path)
        full = (self.server.root / path.lstrip("/")).resolve()
        if not full.is_relative_to(self.server.root.resolve()) or not full.is_file():
            return path, None
        return path, full

    def _status(self, code: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.answered = True
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self.server.count(len(body))

    def _serve(self, head: bool) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        self.answered = False
        path, full = self._route()
        if self.answered:
            return  # answered by _route (the Hub stub's listing, a refusal)
        fault = self.server.take_fault(path)
        if fault == "stall":
            time.sleep(self.server.stall_s)
        if fault in ("404", "403", "503"):
            self._status(int(fault), f"injected {fault}\n".encode())
            return
        if full is None:
            self._status(404, b"not found\n")
            return
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", (rng or "").strip())
        with self.server.lock:
            swap = self.server.swaps.get(path)
            if swap is not None and not head and m and int(m.group(1)) >= swap[0]:
                del self.server.swaps[path]
                os.replace(swap[1], full)  # the file is replaced while a client reads it
        st = full.stat()
        size = st.st_size
        start, end = 0, size
        partial = False
        if rng and fault != "ignore-range":
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m:
                self._status(416)
                return
            start = int(m.group(1))
            end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            if start >= size or start >= end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            partial = True
        self.send_response(206 if partial else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if head:
            return
        with self.server.lock:
            self.server.active += 1
            self.server.max_active = max(self.server.max_active, self.server.active)
        try:
            self._body(full, start, end, fault)
        finally:
            with self.server.lock:
                self.server.active -= 1

    def _body(self, full: Path, start: int, end: int, fault: str | None) -> None:
        if self.server.delay:
            time.sleep(self.server.delay)  # slow enough that reads overlap
        stop = end if fault != "drop" else start + (end - start) // 2
        with open(full, "rb") as f:
            pos = start
            while pos < stop:
                data = os.pread(f.fileno(), min(CHUNK, stop - pos), pos)
                if not data:
                    break
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return
                self.server.count(len(data))
                pos += len(data)
        if fault == "drop":
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _HubHandler(_RangeHandler):
    """``ROOT/ORG/REPO/PATH`` served as the Hub's tree API and resolve URLs."""

    def _route(self) -> tuple[str, Path | None]:
        url = urlsplit(self.path)
        path = unquote(url.path)
        root = self.server.root.resolve()
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m:
            repo, sub = m.group(2), (m.group(4) or "").strip("/")
            if not self._authorized(repo):
                return path, None
            folder = (root / repo / sub).resolve()
            if not folder.is_relative_to(root) or not folder.is_dir():
                body = json.dumps({"error": "Entry not found"}).encode()
                self._status(404, body, "application/json")
                return path, None
            items = []
            for child in sorted(folder.iterdir()):
                rel = str(child.relative_to(root / repo))
                if child.is_dir():
                    items.append({"type": "directory", "path": rel, "oid": "0" * 40})
                else:
                    items.append({"type": "file", "path": rel, "size": child.stat().st_size, "oid": "0" * 40})
            self._status(200, json.dumps(items).encode(), "application/json")
            return path, None
        m = re.fullmatch(r"/(?:datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m is None:
            return path, None
        repo, file = m.group(1), m.group(3)
        if not self._authorized(repo):
            return path, None
        full = (root / repo / file).resolve()
        if not full.is_relative_to(root) or not full.is_file():
            return path, None
        return path, full

    def _authorized(self, repo: str) -> bool:
        token = self.server.private.get(repo)
        if token is None:
            return True
        got = self.headers.get("Authorization")
        if got == f"Bearer {token}":
            return True
        self._status(401 if got is None else 403, b'{"error": "access denied"}', "application/json")
        return False


class RangeServer:
    """``with RangeServer(folder) as srv:`` files of ``folder`` at ``srv.url + "/NAME"``."""

    handler: type[BaseHTTPRequestHandler] = _RangeHandler

    def __init__(self, root: Path) -> None:
        self.httpd = _Server(root, self.handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def bytes_served(self) -> int:
        return self.httpd.bytes_served

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        return self.httpd.requests

    @property
    def max_active(self) -> int:
        return self.httpd.max_active

    def reset(self) -> None:
        with self.httpd.lock:
            self.httpd.bytes_served = 0
            self.httpd.requests.clear()
            self.httpd.max_active = 0
            self.httpd.faults.clear()
            self.httpd.always.clear()
            self.httpd.swaps.clear()
            self.httpd.delay = 0.0

    def swap(self, path: str, offset: int, replacement: Path) -> None:
        """Replace the file served at ``path`` by ``replacement`` (moved there) when a GET first asks
        for a range starting at or after ``offset``: the file changes while a client reads it."""
        with self.httpd.lock:
            self.httpd.swaps[path] = (offset, replacement)

    def fault(self, path: str, *faults: str) -> None:
        """Answer the next requests of ``path`` with these faults, one each."""
        with self.httpd.lock:
            self.httpd.faults.setdefault(path, []).extend(faults)

    def fault_always(self, path: str, fault: str | None) -> None:
        with self.httpd.lock:
            if fault is None:
                self.httpd.always.pop(path, None)
            else:
                self.httpd.always[path] = fault


class HubStub(RangeServer):
    handler = _HubHandler

    def make_private(self, repo: str, token: str) -> None:
        self.httpd.private[repo] = token


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
