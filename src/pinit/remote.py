"""Remote checkpoints: ``hf://``, ``https://``, ``http://``, ``s3://`` and ``gs://`` paths (SPEC section 1).

A :class:`RemoteFile` is the remote counterpart of a local file descriptor: a size and ranged
reads. The readers take either (``pinit.files.pread``, ``size_of``, ``reopen``, ``file_storage``),
so a remote file is read exactly as a local one, and only the bytes a command needs are
transferred: for a listing the safetensors length and JSON header, or a torch zip's end records,
central directory and ``data.pkl``; tensor data is streamed in blocks of :data:`BLOCK_BYTES`, with
:data:`AHEAD_BLOCKS` more requested ahead while one is consumed (several requests in flight), and
at most :data:`KEEP_BLOCKS` blocks held per file and :data:`READING_FILES` files holding blocks
(memory stays bounded). Nothing is downloaded whole, and nothing is kept on disk unless ``--cache DIR``
(:class:`CachedBackend`: each range read, reused while the file's size and ETag/Last-Modified stay).

Transports:

- ``http(s)://`` with the standard library (``http.client``): HEAD for the size, ``GET`` with
  ``Range`` for the bytes (a server that ignores ranges is refused, never read whole).
- ``hf://ORG/REPO[@REV][/PATH]`` (also ``hf://datasets/...`` and ``hf://spaces/...``): files are read
  from the Hub's ``resolve`` URLs as above (``HF_ENDPOINT``, ``HF_TOKEN`` honoured, the token sent
  only to the endpoint's host); a repository or folder is listed with ``huggingface_hub``.
- ``s3://`` and ``gs://`` through ``fsspec`` (``s3fs``, ``gcsfs``): ``cat_file`` with a byte range.
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` names another S3 endpoint (MinIO, moto).

Transient failures (connection reset or dropped, timeouts, HTTP 5xx and 429) are retried
:data:`TRIES` times with exponential backoff; every failure is one ``PinitError`` naming the URL
(user info and query stripped) and the HTTP status.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import queue
import socket
import ssl
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from pinit.errors import PinitError
from pinit.storage import Storage

if TYPE_CHECKING:
    import numpy as np

    from pinit.checkpoint import Checkpoint, LoadOptions

EXTRA_HINT = "pip install 'pinit[remote]'"

BLOCK_BYTES = 4 << 20  # one ranged request of tensor data
AHEAD_BLOCKS = 3  # requested ahead of the block being read
KEEP_BLOCKS = 8  # blocks (done or in flight) held per file (two readers, each 1 + AHEAD_BLOCKS), LRU dropped
READING_FILES = 4  # files holding blocks at once (the others' are dropped): at most 128 MiB in all
POOL_THREADS = 8
TRIES = 3
BACKOFF_S = 0.25
MAX_REDIRECTS = 8
DEFAULT_TIMEOUT_S = 60.0
MAX_LISTING = 100_000
# The first bytes, read once and kept: the format sniff, then the safetensors header length. No
# more: a listing never transfers tensor data (a wider window would save a round trip, not bytes).
HEAD_WINDOW = 16
# The last bytes: a zip's end record (without a comment) and the zip64 locator before it, where
# zipfile and pinit both look (central directory bytes, never tensor data).
TAIL_WINDOW = 22 + 20
MAX_PREFETCHED = 100_000  # small reads requested ahead (a torch zip's local headers)
MAX_PARALLEL_SHARDS = 10_000  # shards of an index prepared ahead (size and head asked for at once)

T = TypeVar("T")


@dataclass
class Settings:
    timeout: float = DEFAULT_TIMEOUT_S
    tries: int = TRIES
    backoff: float = BACKOFF_S
    cache: str | None = None  # --cache DIR: ranges read are kept there (CachedBackend)


settings = Settings()


def configure(timeout: float | None = None, reset: bool = False, cache: str | None = None) -> None:
    """Set the timeout of every remote request (seconds) for what follows (the CLI's ``--timeout``);
    without one, ``PINIT_TIMEOUT`` when set, else (``reset``) the default. ``cache``: the folder of
    ``--cache`` (``reset`` without one: no cache)."""
    if cache is not None:
        if os.path.exists(cache) and not os.path.isdir(cache):
            raise PinitError("--cache must name a folder", cache)
        settings.cache = os.path.abspath(cache)
    elif reset:
        settings.cache = None
    env = os.environ.get("PINIT_TIMEOUT", "").strip()
    if timeout is None and reset and not env:
        timeout = DEFAULT_TIMEOUT_S
    if timeout is None and env:
        try:
            timeout = float(env)
        except ValueError:
            raise PinitError(f"PINIT_TIMEOUT={env!r} is not a number of seconds") from None
    if timeout is not None:
        if not timeout > 0:
            raise PinitError("--timeout must be a positive number of seconds")
        settings.timeout = float(timeout)


def redact(url: str) -> str:
    """``url`` as it may be shown: no user info (``user:password@``), no query (signatures, tokens)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# --- errors ------------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying; ``message`` says what it was if the last try fails too."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _status_error(status: int, reason: str, url: str) -> PinitError | _Transient:
    if status == 404 or status == 410:
        return PinitError(f"not found (HTTP {status})", url)
    if status in (401, 403):
        return PinitError(f"access denied (HTTP {status}; check HF_TOKEN / credentials)", url)
    if status == 416:
        return PinitError(f"range not satisfiable (HTTP {status}): the file is shorter than its size", url)
    if status == 429 or status >= 500:
        return _Transient(f"HTTP {status} {reason}".strip())
    return PinitError(f"HTTP {status} {reason}".strip(), url)


def _retrying(what: Callable[[], T], url: str) -> T:
    """``what()``, tried again after a transient failure (with exponential backoff)."""
    last = ""
    for attempt in range(max(1, settings.tries)):
        if attempt:
            time.sleep(settings.backoff * (2 ** (attempt - 1)))
        try:
            return what()
        except _Transient as e:
            last = e.message
    raise PinitError(f"{last} (after {settings.tries} tries)", url)


def _network_error(e: BaseException) -> _Transient:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return _Transient(f"timed out after {settings.timeout:g} s")
    if isinstance(e, http.client.IncompleteRead):
        return _Transient("connection dropped in the middle of a response")
    if isinstance(e, ssl.SSLError):
        return _Transient(f"TLS error ({e.reason or e})")
    name = type(e).__name__
    detail = getattr(e, "strerror", None) or str(e) or name
    return _Transient(f"connection failed ({detail})")


def _missing_extra(url: str, module: str) -> PinitError:
    return PinitError(f"reading {url} needs the remote extra ({module} is not installed): {EXTRA_HINT}", url)


# --- transports --------------------------------------------------------------------------------


class Backend:
    """One remote file: its size and exact byte ranges (``display``: the URL as shown)."""

    display: str
    checks_each_range = False  # True: every range answer is checked against the validator

    def size(self) -> int:
        raise NotImplementedError

    def validator(self) -> str:
        """What changes when the file changes (ETag, Last-Modified), or "" where none is known."""
        return ""

    def current_validator(self) -> str:
        """The validator asked for again now (not the one read when the file was opened); asked
        only of a backend that does not check each range answer (``checks_each_range``)."""
        return ""

    def fetch(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)`` exactly (fewer only at the end of the file)."""
        raise NotImplementedError


class HttpBackend(Backend):
    """A file behind an HTTP(S) URL read with HEAD and ranged GETs (keep-alive connections, one per
    thread and host). ``headers`` (a token) are sent to ``url``'s host only, never to a redirect's."""

    checks_each_range = True  # each 206's ETag/Last-Modified is compared (_same_file)

    def __init__(self, url: str, headers: dict[str, str] | None = None, display: str | None = None) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.display = display or redact(url)
        self._origin = urlsplit(url).netloc
        userinfo = self._origin.rpartition("@")[0]
        if userinfo and "Authorization" not in self.headers:  # https://USER:PASSWORD@HOST/...: basic auth
            import base64
            from urllib.parse import unquote

            user, _, password = userinfo.partition(":")
            pair = f"{unquote(user)}:{unquote(password)}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        self._local = threading.local()
        self._final: str | None = None  # where redirects led (reused: one round trip per read)
        self._size: int | None = None
        self._validator = ""
        self.requests = 0

    def validator(self) -> str:
        self.size()
        return self._validator

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None or conn.timeout != settings.timeout:
            host = netloc.rsplit("@", 1)[-1]
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, timeout=settings.timeout)
            else:
                conn = http.client.HTTPConnection(host, timeout=settings.timeout)
            conns[(scheme, netloc)] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conns = self._local.__dict__.get("conns", {})
        conn = conns.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def _request(self, method: str, extra: dict[str, str]) -> tuple[http.client.HTTPResponse, str, str]:
        """The response to ``method`` (redirects followed), with the scheme and host it came from."""
        url = self._final or self.url
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise PinitError(f"redirected to a {parts.scheme or 'relative'} URL pinit does not read", self.display)
            headers = {"User-Agent": "pinit", **extra}
            if parts.netloc == self._origin:
                headers.update(self.headers)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            conn = self._connection(parts.scheme, parts.netloc)
            self.requests += 1
            try:
                conn.request(method, target, headers=headers)
                resp = conn.getresponse()
            except PinitError:
                raise
            except (OSError, http.client.HTTPException) as e:
                self._drop(parts.scheme, parts.netloc)
                raise _network_error(e) from None
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                resp.read()
                url = urljoin(url, resp.getheader("Location", ""))
                continue
            if method == "GET" and resp.status < 300:
                self._final = url
            return resp, parts.scheme, parts.netloc
        raise PinitError(f"more than {MAX_REDIRECTS} redirects", self.display)

    def size(self) -> int:
        if self._size is None:
            self._size = _retrying(self._size_once, self.display)
        return self._size

    def _size_once(self) -> int:
        resp, scheme, netloc = self._request("HEAD", {"Accept-Encoding": "identity"})
        resp.read()
        self._validator = _validator_of(resp)
        if resp.status < 300:
            length = resp.getheader("Content-Length")
            if length is not None and length.strip().isdigit():
                return int(length)
        elif resp.status not in (405, 501):  # HEAD not allowed: ask for one byte instead
            err = _status_error(resp.status, resp.reason, self.display)
            raise err
        resp, scheme, netloc = self._request("GET", {"Range": "bytes=0-0", "Accept-Encoding": "identity"})
        try:
            if resp.status == 206:
                self._validator = _validator_of(resp)
                total = (resp.getheader("Content-Range") or "").rpartition("/")[2]
                if total.isdigit():
                    resp.read()
                    return int(total)
            if resp.status >= 300:
                raise _status_error(resp.status, resp.reason, self.display)
            raise PinitError(
                "the server gives no size for the file (no Content-Length, no Content-Range)", self.display
            )
        except BaseException:
            self._drop(scheme, netloc)
            raise

    def fetch(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return _retrying(lambda: self._fetch_once(start, end), self.display)

    def _fetch_once(self, start: int, end: int) -> bytes:
        resp, scheme, netloc = self._request(
            "GET", {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        )
        try:
            if resp.status == 200 and start == 0 and end == self._size:  # the whole file asked for
                return _body(resp, end)
            if resp.status == 200:
                raise PinitError(
                    "the server ignores HTTP range requests (it answered 200 to a Range request); "
                    "pinit reads remote files only in ranges",
                    self.display,
                )
            if resp.status != 206:
                raise _status_error(resp.status, resp.reason, self.display)
            got = (resp.getheader("Content-Range") or "").split()
            span = got[1].split("/")[0] if len(got) == 2 and got[0] == "bytes" else ""
            if not span.startswith(f"{start}-"):
                raise PinitError(
                    f"the server answered the range {start}-{end - 1} with {span or 'no range'}", self.display
                )
            _same_file(self._validator, _validator_of(resp), self.display)
            return _body(resp, end - start)
        except BaseException:
            self._drop(scheme, netloc)  # the body may be unread: the connection cannot be reused
            raise


def _body(resp: http.client.HTTPResponse, n: int) -> bytes:
    """The response's body, which must be ``n`` bytes (fewer: the connection dropped)."""
    try:
        data = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise _network_error(e) from None
    if len(data) != n:
        raise _Transient("connection dropped in the middle of a response")
    return data


class FsspecBackend(Backend):
    """A file of an fsspec filesystem (s3fs, gcsfs) read with ranged ``cat_file``."""

    def __init__(self, fs: Any, path: str, display: str, size: int | None = None) -> None:
        self.fs, self.path, self.display = fs, path, display
        self._size = size
        self._validator = ""

    def size(self) -> int:
        if self._size is None:
            info = _retrying(lambda: _fs_call(lambda: self.fs.info(self.path), self.display), self.display)
            if info.get("type") == "directory":
                raise PinitError("is a folder (prefix), not a file", self.display)
            self._size = int(info["size"])
            self._validator = self._validator_of(info)
        return self._size

    @staticmethod
    def _validator_of(info: dict[str, Any]) -> str:
        keys = ("ETag", "etag", "generation", "LastModified", "updated", "mtime")
        return "|".join(str(info.get(k, "")) for k in keys)

    def validator(self) -> str:
        self.size()
        return self._validator

    def current_validator(self) -> str:
        self.size()
        try:
            self.fs.invalidate_cache(self.path)  # fsspec keeps listings: ask the store itself
        except Exception:  # a filesystem without a cache to drop
            pass
        info = _retrying(lambda: _fs_call(lambda: self.fs.info(self.path), self.display), self.display)
        return self._validator_of(info)

    def fetch(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        data: bytes = _retrying(
            lambda: _fs_call(lambda: self.fs.cat_file(self.path, start=start, end=end), self.display), self.display
        )
        return data


def _validator_of(resp: http.client.HTTPResponse) -> str:
    etag = resp.getheader("X-Linked-Etag") or resp.getheader("ETag") or ""
    return f"{etag}|{resp.getheader('Last-Modified') or ''}"


def _same_file(first: str, now: str, display: str) -> None:
    """Refuse a range whose ETag or Last-Modified (either, where both answers carry it) differs
    from the file's when it was opened: the file was replaced while pinit read it, and bytes of
    two versions must never be mixed into one verdict or one output file."""
    for was, got in zip(first.split("|"), now.split("|"), strict=False):
        if was and got and was != got:
            raise PinitError(
                "the file changed on the server while pinit read it (its ETag/Last-Modified differ "
                "from when it was opened); nothing was written: run again",
                display,
            )


class CachedBackend(Backend):
    """``--cache DIR``: each range read is kept in ``DIR`` (one file per range, named by a hash
    of the URL, the file's size and validator, and the range) and read from there next time."""

    def __init__(self, inner: Backend, folder: str) -> None:
        self.inner, self.folder, self.display = inner, folder, inner.display
        self.hits = 0

    def size(self) -> int:
        return self.inner.size()

    def validator(self) -> str:
        return self.inner.validator()

    def current_validator(self) -> str:
        return self.inner.current_validator()

    @property
    def checks_each_range(self) -> bool:  # type: ignore[override]
        return self.inner.checks_each_range

    def _path(self, start: int, end: int) -> str:
        import hashlib

        ident = f"{self.inner.display}\0{self.size()}\0{self.validator()}\0{start}-{end}"
        digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(self.folder, digest[:2], digest)

    def fetch(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        path = self._path(start, end)
        try:
            with open(path, "rb") as f:
                data = f.read(end - start + 1)
            if len(data) == end - start:
                self.hits += 1
                return data
        except OSError:
            pass
        data = self.inner.fetch(start, end)
        if len(data) == end - start:
            _cache_write(path, data)
        return data


def _cache_write(path: str, data: bytes) -> None:
    from pinit.writers import atomic_file

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_file(path) as fd:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    except (OSError, PinitError) as e:
        raise PinitError(f"cannot write the cache ({getattr(e, 'strerror', None) or e})", path) from None


def _fs_call(what: Callable[[], T], url: str) -> T:
    """``what()`` with fsspec's (and botocore's) errors as PinitError or _Transient."""
    try:
        return what()
    except PinitError:
        raise
    except FileNotFoundError:
        raise PinitError("not found (HTTP 404)", url) from None
    except PermissionError:
        raise PinitError("access denied (HTTP 403; check credentials)", url) from None
    except Exception as e:
        status = _boto_status(e)
        if status is not None:
            raise _status_error(status, "", url) from None
        name = type(e).__name__
        if "NoCredentials" in name or "Credential" in name:
            raise PinitError(
                "no credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or a profile)", url
            ) from None
        if isinstance(e, (OSError, TimeoutError)) or "Timeout" in name or "Connection" in name:
            raise _network_error(e) from None
        raise PinitError(f"cannot read ({name}: {e})", url) from None


def _boto_status(e: BaseException) -> int | None:
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 5:
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
        code = getattr(cur, "code", None) or getattr(cur, "status", None)
        if isinstance(code, int) and 400 <= code < 600:
            return code
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


# --- locations -----------------------------------------------------------------------------------


@dataclass
class Entry:
    name: str  # relative to the listed folder
    size: int
    is_dir: bool


class Location:
    """A parsed remote path: opens the file it names or lists the folder it names."""

    url: str  # as shown (redacted)

    def file(self) -> Backend:
        raise NotImplementedError

    def child(self, name: str) -> Location:
        raise NotImplementedError

    def listing(self) -> list[Entry] | None:
        """The folder's entries, or None: not a folder (or a transport that cannot list)."""
        return None

    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


class HttpLocation(Location):
    def __init__(self, raw: str) -> None:
        self.raw, self.url = raw, redact(raw)

    def file(self) -> Backend:
        return HttpBackend(self.raw, display=self.url)

    def child(self, name: str) -> Location:
        parts = urlsplit(self.raw)
        base = parts.path.rsplit("/", 1)[0]
        return HttpLocation(urlunsplit((parts.scheme, parts.netloc, f"{base}/{quote(name)}", parts.query, "")))

    def name(self) -> str:
        return urlsplit(self.raw).path.rstrip("/").rsplit("/", 1)[-1]


class HfLocation(Location):
    """``hf://[datasets/|spaces/]ORG/REPO[@REV][/PATH]``."""

    def __init__(self, repo_type: str, repo: str, revision: str, path: str) -> None:
        self.repo_type, self.repo, self.revision, self.path = repo_type, repo, revision, path.strip("/")
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        rev = "" if revision == "main" else f"@{revision}"
        self.url = f"hf://{prefix}{repo}{rev}" + (f"/{self.path}" if self.path else "")

    @classmethod
    def parse(cls, url: str) -> HfLocation:
        rest = url.split("://", 1)[1].strip("/")
        parts = rest.split("/")
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces", "models"):
            repo_type = parts.pop(0)[:-1]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise PinitError("a Hugging Face path is hf://ORG/REPO[@REVISION][/PATH]", redact(url))
        name, _, revision = parts[1].partition("@")
        if not name:
            raise PinitError("a Hugging Face path is hf://ORG/REPO[@REVISION][/PATH]", redact(url))
        path = "/".join(parts[2:])
        if revision.startswith("refs") and parts[2:3] and parts[2] in ("pr", "convert"):  # @refs/pr/1
            revision = "/".join([revision, *parts[2:4]])
            path = "/".join(parts[4:])
        return cls(repo_type, f"{parts[0]}/{name}", revision or "main", path)

    @staticmethod
    def endpoint() -> str:
        return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")

    @staticmethod
    def token() -> str | None:
        return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None

    def file(self) -> Backend:
        if not self.path:
            raise PinitError("names a repository, not a file", self.url)
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        url = f"{self.endpoint()}/{prefix}{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(self.path)}"
        token = self.token()
        return HttpBackend(url, {"Authorization": f"Bearer {token}"} if token else {}, display=self.url)

    def child(self, name: str) -> Location:
        base = self.path.rsplit("/", 1)[0] if "/" in self.path else ""
        return HfLocation(self.repo_type, self.repo, self.revision, f"{base}/{name}" if base else name)

    def folder(self, name: str) -> Location:
        return HfLocation(self.repo_type, self.repo, self.revision, f"{self.path}/{name}" if self.path else name)

    def listing(self) -> list[Entry] | None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise _missing_extra(self.url, "huggingface_hub") from None
        api = HfApi(endpoint=self.endpoint(), token=self.token() or False)
        return _retrying(lambda: self._list_once(api), self.url)

    def _list_once(self, api: Any) -> list[Entry] | None:
        try:
            items = list(
                api.list_repo_tree(
                    self.repo, path_in_repo=self.path or None, revision=self.revision, repo_type=self.repo_type
                )
            )
        except Exception as e:
            status = _hf_status(e)
            if status == 404 and self.path:
                return None  # not a folder: a file (or nothing, which opening it says)
            if status is not None:
                raise _status_error(status, "", self.url) from None
            if isinstance(e, (OSError, TimeoutError)) or "Timeout" in type(e).__name__ or "Connect" in type(e).__name__:
                raise _network_error(e) from None
            raise PinitError(f"cannot list the repository ({type(e).__name__}: {e})", self.url) from None
        out = []
        for item in items[:MAX_LISTING]:
            rel = item.path[len(self.path) + 1 :] if self.path else item.path
            out.append(Entry(rel, int(getattr(item, "size", 0) or 0), type(item).__name__ == "RepoFolder"))
        if self.path and len(out) == 1 and not out[0].is_dir and out[0].name in ("", self.path):
            return None  # the path is a file
        return out


def _hf_status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


class FsspecLocation(Location):
    """``s3://BUCKET/KEY`` or ``gs://BUCKET/KEY`` through fsspec."""

    def __init__(self, scheme: str, path: str, fs: Any = None) -> None:
        self.scheme, self.path = scheme, path.strip("/")
        self.url = f"{scheme}://{self.path}"
        self._fs = fs

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = _filesystem(self.scheme, self.url)
        return self._fs

    def file(self) -> Backend:
        return FsspecBackend(self.fs, self.path, self.url)

    def child(self, name: str) -> Location:
        base = self.path.rsplit("/", 1)[0]
        return FsspecLocation(self.scheme, f"{base}/{name}", self._fs)

    def folder(self, name: str) -> Location:
        return FsspecLocation(self.scheme, f"{self.path}/{name}", self._fs)

    def listing(self) -> list[Entry] | None:
        if "/" in self.path and self.path.rsplit("/", 1)[1].endswith(_suffixes()):
            return None  # named like a checkpoint file: opened as one (no listing request)
        items = _retrying(lambda: _fs_call(lambda: self.fs.ls(self.path, detail=True), self.url), self.url)
        out = []
        for item in items[:MAX_LISTING]:
            name = str(item.get("name", "")).rstrip("/")
            rel = name[len(self.path) + 1 :] if name.startswith(self.path + "/") else name.rsplit("/", 1)[-1]
            if not rel or (name == self.path and item.get("type") != "directory"):
                return None  # the path is a file
            out.append(Entry(rel, int(item.get("size") or 0), item.get("type") == "directory"))
        return out


def _filesystem(scheme: str, url: str) -> Any:
    timeout = settings.timeout
    if scheme == "s3":
        try:
            import s3fs
        except ImportError:
            raise _missing_extra(url, "s3fs") from None
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        return s3fs.S3FileSystem(
            endpoint_url=endpoint,
            skip_instance_cache=True,
            default_block_size=BLOCK_BYTES,
            config_kwargs={"connect_timeout": timeout, "read_timeout": timeout, "retries": {"max_attempts": 1}},
        )
    try:
        import gcsfs
    except ImportError:
        raise _missing_extra(url, "gcsfs") from None
    return gcsfs.GCSFileSystem(skip_instance_cache=True, timeout=timeout)


def parse(url: str) -> Location:
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        return HttpLocation(url)
    if scheme == "hf":
        return HfLocation.parse(url)
    rest = url.split("://", 1)[1]
    if not rest.strip("/"):
        raise PinitError(f"a {scheme}:// path names a bucket: {scheme}://BUCKET[/KEY]", redact(url))
    return FsspecLocation("gs" if scheme == "gcs" else scheme, rest)


def _suffixes() -> tuple[str, ...]:
    from pinit.checkpoint import CHECKPOINT_SUFFIXES, INDEX_SUFFIXES

    return (*CHECKPOINT_SUFFIXES, *INDEX_SUFFIXES)


# --- the file ------------------------------------------------------------------------------------


class _Pool:
    """Worker threads for the requests made ahead. Daemon threads, unlike ``ThreadPoolExecutor``'s:
    a command that ends (an error, a selection read) does not wait for reads nobody needs."""

    def __init__(self, threads: int) -> None:
        self.threads, self.started = threads, 0
        self.queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        fut: Future[T] = Future()
        self.queue.put((fut, fn, args))
        with self.lock:
            if self.started < self.threads:
                self.started += 1
                threading.Thread(target=self._work, name=f"pinit-remote-{self.started}", daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            fut, fn, args = self.queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:
                fut.set_exception(e)
            del fut, fn, args


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _executor() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(POOL_THREADS)
        return _pool


class RemoteFile:
    """A remote file read by ranges: :meth:`pread` for headers (exactly the bytes asked for) and
    :meth:`read_data` for tensor data (blocks, read ahead on a thread pool, a few held)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.url = backend.display
        self.size = backend.size()
        self._blocks: OrderedDict[int, Future[bytes]] = OrderedDict()
        self._small: dict[tuple[int, int], Future[bytes]] = {}  # prefetched header reads
        self._windows: dict[tuple[int, int], Future[bytes]] = {}  # the head and tail windows
        self._lock = threading.Lock()
        self.closed = False

    def pread(self, n: int, offset: int) -> bytes:
        end = min(offset + max(n, 0), self.size)
        if end <= offset:
            return b""
        with self._lock:
            ahead = self._small.pop((offset, n), None)
        if ahead is not None:
            return ahead.result()
        window = self._window(offset, end)
        if window is not None:
            lo, data = window
            return data[offset - lo : end - lo]
        return self.backend.fetch(offset, end)

    def _window(self, offset: int, end: int) -> tuple[int, bytes] | None:
        """The file's first :data:`HEAD_WINDOW` or last :data:`TAIL_WINDOW` bytes, read once whole
        when a read falls inside them (the format sniff and the safetensors header length; a zip's
        end records and central directory, where zipfile and pinit both look: one round trip
        instead of several), else None."""
        for lo, hi in ((0, min(self.size, HEAD_WINDOW)), (max(0, self.size - TAIL_WINDOW), self.size)):
            if lo <= offset and end <= hi:
                with self._lock:
                    fut = self._windows.get((lo, hi))
                    if fut is None:
                        fut = self._windows[(lo, hi)] = _executor().submit(self.backend.fetch, lo, hi)
                try:
                    return lo, fut.result()
                except BaseException:
                    with self._lock:
                        self._windows.pop((lo, hi), None)
                    raise
        return None

    def warm_head(self) -> None:
        """Read the head window now, in this thread (a worker preparing a shard: never waiting on
        another worker)."""
        hi = min(self.size, HEAD_WINDOW)
        if hi > 0:
            fut: Future[bytes] = Future()
            fut.set_result(self.backend.fetch(0, hi))
            with self._lock:
                self._windows.setdefault((0, hi), fut)

    def prefetch(self, reads: list[tuple[int, int]]) -> None:
        """Request these small ``(offset, n)`` reads now, several at once (a torch zip's local
        headers): the :meth:`pread` calls that follow find them done instead of waiting one round
        trip each."""
        pool = _executor()
        with self._lock:
            for offset, n in reads[:MAX_PREFETCHED]:
                end = min(offset + max(n, 0), self.size)
                if end > offset and (offset, n) not in self._small and n <= 64 * 1024:
                    self._small[(offset, n)] = pool.submit(self.backend.fetch, offset, end)

    def read_data(self, offset: int, out: memoryview, limit: int) -> None:
        """Fill ``out`` with the bytes at ``offset``; blocks up to ``limit`` (the end of the tensor
        data being read) are requested ahead."""
        done = 0
        while done < len(out):
            at = offset + done
            index = at // BLOCK_BYTES
            block = self._block(index, limit)
            lo = at - index * BLOCK_BYTES
            n = min(len(block) - lo, len(out) - done)
            if n <= 0:
                raise PinitError("file ended inside tensor data (truncated?)", self.url)
            out[done : done + n] = memoryview(block)[lo : lo + n]
            done += n

    def _block(self, index: int, limit: int) -> bytes:
        _note_reading(self)
        while True:
            with self._lock:
                wanted = self._schedule(index)
                last = min(limit, self.size)
                for ahead in range(index + 1, index + 1 + AHEAD_BLOCKS):
                    if ahead * BLOCK_BYTES >= last:
                        break
                    self._schedule(ahead)
                while len(self._blocks) > KEEP_BLOCKS:
                    self._blocks.popitem(last=False)[1].cancel()  # not started yet: never sent
            try:
                return wanted.result()
            except CancelledError:  # dropped before it was sent (another reader's blocks came after)
                continue
            except BaseException:
                with self._lock:
                    if self._blocks.get(index) is wanted:
                        del self._blocks[index]  # a failed block is asked again by the next read
                raise

    def _schedule(self, index: int) -> Future[bytes]:
        fut = self._blocks.get(index)
        if fut is None:
            start = index * BLOCK_BYTES
            end = min(start + BLOCK_BYTES, self.size)
            fut = self._blocks[index] = _executor().submit(self.backend.fetch, start, end)
        else:
            self._blocks.move_to_end(index)
        return fut

    def reader(self) -> RemoteReader:
        return RemoteReader(self)

    def check_unchanged(self) -> None:
        """After a whole read (a download into an output file): ask the store for the file's
        validator again; a different one means the file was replaced while it was read, which
        per-range checks cannot see where the store gives no validator per range (S3, GCS
        through fsspec). Nothing to ask where every range answer was checked already (HTTP)."""
        if not self.backend.checks_each_range:
            _same_file(self.backend.validator(), self.backend.current_validator(), self.url)

    def close(self) -> None:
        self.closed = True
        with self._lock:
            for fut in [*self._blocks.values(), *self._small.values(), *self._windows.values()]:
                fut.cancel()  # not started yet: never sent
            self._blocks.clear()
            self._small.clear()
            self._windows.clear()


_reading: OrderedDict[int, weakref.ref[RemoteFile]] = OrderedDict()  # files holding blocks, oldest first


def _note_reading(rf: RemoteFile) -> None:
    """Note that ``rf`` is being read; the blocks of files read longest ago beyond the
    :data:`READING_FILES` most recent are dropped (a sharded checkpoint's shards stay open)."""
    drop: list[RemoteFile] = []
    with _pool_lock:
        _reading[id(rf)] = weakref.ref(rf)
        _reading.move_to_end(id(rf))
        while len(_reading) > READING_FILES:
            _, ref = _reading.popitem(last=False)
            other = ref()
            if other is not None and other is not rf:
                drop.append(other)
    for other in drop:
        with other._lock:
            for fut in other._blocks.values():
                fut.cancel()
            other._blocks.clear()


class RemoteReader(io.RawIOBase):
    """A read-only, seekable file object over a :class:`RemoteFile` (for ``zipfile``): each read is
    one ranged request of exactly the bytes asked for, no read-ahead."""

    def __init__(self, rf: RemoteFile) -> None:
        super().__init__()
        self.rf, self.pos = rf, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.rf.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the file")
        self.pos = base + offset
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.rf.size - self.pos
        data = self.rf.pread(n, self.pos)
        self.pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buf: Any) -> int:
        mv = memoryview(buf).cast("B")
        data = self.read(len(mv))
        mv[: len(data)] = data
        return len(data)


class RangeStorage(Storage):
    """Bytes at ``offset`` in a :class:`RemoteFile` (the remote counterpart of ``FileStorage``)."""

    def __init__(self, rf: RemoteFile, offset: int, nbytes: int, key: Any, path: str) -> None:
        self.rf, self.offset, self.nbytes, self.key, self.path = rf, offset, nbytes, key, path

    def read_into(self, start: int, out: np.ndarray) -> None:
        self.rf.read_data(self.offset + start, memoryview(out).cast("B"), self.offset + self.nbytes)


# --- opening -------------------------------------------------------------------------------------


def open_file(loc: Location) -> RemoteFile:
    backend = loc.file()
    if settings.cache is not None:
        backend = CachedBackend(backend, settings.cache)
    return RemoteFile(backend)


def read_small(loc: Location, limit: int, what: str) -> bytes:
    rf = open_file(loc)
    if rf.size > limit:
        raise PinitError(f"{what} is {rf.size:,} bytes, more than the {limit:,} pinit reads", loc.url)
    return rf.pread(rf.size, 0)


def open_remote(url: str, options: LoadOptions) -> Checkpoint:
    """Open the remote checkpoint ``url``: a file, an index (a sharded checkpoint), or a folder
    (repository, prefix) holding one index or one checkpoint file, as a local folder is read."""
    configure()
    try:
        return _open_location(parse(url), options)
    except PinitError as e:
        if e.path is None:  # named here, never by the URL as given (it may hold credentials)
            e.path = redact(url)
        raise


def _open_location(loc: Location, options: LoadOptions) -> Checkpoint:
    from pinit import checkpoint as cp

    name = loc.name()
    if name.endswith(".index.json"):
        return _open_index(loc, options)
    if name.endswith(cp.CHECKPOINT_SUFFIXES):
        return _open_one(loc, options)
    listing = loc.listing()
    if listing is None:
        return _open_one(loc, options)
    assert isinstance(loc, (HfLocation, FsspecLocation))
    files = [e for e in listing if not e.is_dir]
    if any(e.name == ".metadata" for e in files) and any(e.name.endswith(".distcp") for e in files):
        raise PinitError("a torch.distributed.checkpoint folder is not read remotely yet; download it", loc.url)
    indexes = sorted(e.name for e in files if e.name.endswith(cp.INDEX_SUFFIXES))
    if len(indexes) == 1:
        return _open_index(loc.folder(indexes[0]), options)
    if len(indexes) > 1:
        raise PinitError(f"folder holds several shard indexes ({', '.join(indexes)}); name the one to read", loc.url)
    ckpts = sorted(e.name for e in files if e.name.endswith(cp.CHECKPOINT_SUFFIXES))
    if len(ckpts) == 1:
        return _open_one(loc.folder(ckpts[0]), options)
    if not ckpts:
        raise PinitError("folder holds no checkpoint file or shard index", loc.url)
    raise PinitError(f"folder holds {len(ckpts)} checkpoint files and no index; name one", loc.url)


def expand(url: str) -> list[str]:
    """The checkpoints ``pinit check`` finds at ``url``: a folder (repository, prefix) holding several
    checkpoint files and no index gives each of them; anything else is one checkpoint (errors are
    left to opening it, where they become that file's finding)."""
    from pinit import checkpoint as cp

    try:
        loc = parse(url)
        if loc.name().endswith((*cp.CHECKPOINT_SUFFIXES, *cp.INDEX_SUFFIXES)):
            return [url]
        listing = loc.listing()
    except PinitError:
        return [url]
    if listing is None or not isinstance(loc, (HfLocation, FsspecLocation)):
        return [url]
    names = sorted(e.name for e in listing if not e.is_dir)
    if ".metadata" in names or any(n.endswith(cp.INDEX_SUFFIXES) for n in names):
        return [url]  # one checkpoint (a DCP folder, or the index opening the folder picks or refuses)
    ckpts = [n for n in names if n.endswith(cp.CHECKPOINT_SUFFIXES)]
    return [loc.folder(n).url for n in ckpts] if len(ckpts) > 1 else [url]


def _open_one(loc: Location, options: LoadOptions) -> Checkpoint:
    from pinit import checkpoint as cp

    rf = open_file(loc)
    return cp.open_file_ref(loc.url, rf, options)


def _open_index(loc: Location, options: LoadOptions) -> Checkpoint:
    from pinit import checkpoint as cp
    from pinit.files import MAX_INDEX_BYTES

    raw = read_small(loc, MAX_INDEX_BYTES, "shard index")
    ready: dict[str, Future[RemoteFile]] = {}
    for name in _shard_names(raw):  # every shard's size and header asked for at once, not one by one
        if _fair_shard_name(name):
            ready[name] = _executor().submit(_opened, loc.child(name))

    def open_shard(name: str) -> Checkpoint:
        if not _fair_shard_name(name):
            raise PinitError(f"shard name {name!r} leaves the checkpoint folder", loc.url)
        child = loc.child(name)
        fut = ready.pop(name, None)
        rf = fut.result() if fut is not None else open_file(child)
        return cp.open_file_ref(child.url, rf, options)

    try:
        return cp.open_shards(raw, loc.url, open_shard)
    finally:
        for fut in ready.values():
            fut.cancel()


def _fair_shard_name(name: str) -> bool:
    return (
        bool(name)
        and not name.startswith("/")
        and ".." not in name.split("/")
        and name == name.strip()
        and "\0" not in name
    )


def _shard_names(raw: bytes) -> list[str]:
    """The shard names of an index document (nothing when it is not one: opening it says why)."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return []
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        return []
    return list(dict.fromkeys(v for v in weight_map.values() if isinstance(v, str)))[:MAX_PARALLEL_SHARDS]


def _opened(loc: Location) -> RemoteFile:
    """A shard's remote file, its size known and its first bytes read (on a worker thread)."""
    rf = open_file(loc)
    rf.warm_head()
    return rf
