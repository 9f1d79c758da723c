"""``cas``: the command line client of a node's HTTP API (docs/api.md, docs/cli.md).

It speaks HTTP with the standard library's ``http.client`` only and streams in 1 MiB chunks, so it runs in
constant, small memory whatever the file size. It must not import Twisted (checked by the tests): the
client is a short-lived process that should start fast and stay small.

Exit codes (docs/cli.md): 0 ok; 1 the operation failed; 2 usage, malformed key, refused file name or an
existing file; 3 not found; 4 the node is unreachable or refused the token; 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import math
import mimetypes
import os
import re
import select
import signal
import socket
import stat
import sys
import tempfile
import time
import unicodedata
import urllib.parse
from typing import IO, Any, Callable, Iterator, NoReturn

from cas.store.paths import default_data_dir, state_dir

CHUNK = 1 << 20
DEFAULT_PORT = 3000
DEFAULT_TIMEOUT = 300.0
MAX_JSON = 16 << 20  # the largest JSON answer read (a long `ls`)
MAX_KEY_LINE = 4096
NAME_MAX_BYTES = 255

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NODE = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
EXIT_TERMINATED = 143

USER_AGENT = "cas-cli"


class CliError(Exception):
    """An error shown as one line ``cas: MESSAGE`` with exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class StdoutClosed(Exception):
    """stdout is a pipe whose reader went away: exit quietly."""


class Terminated(BaseException):
    """SIGTERM: unwinds like KeyboardInterrupt so partial downloads are removed."""


# ---------------------------------------------------------------------------------------------------------
# Text shown to people: never let bytes from the network or a file name drive the terminal.

_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _bad_char(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI


def printable(text: str, limit: int = 200) -> str:
    """``text`` with control, bidi and separator characters escaped, cut to ``limit`` characters."""
    out = "".join(c.encode("unicode_escape").decode("ascii") if _bad_char(c) else c for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def fs_name(path: str) -> str:
    """A path for an error message (paths may hold control characters too)."""
    return printable(path, 300)


# ---------------------------------------------------------------------------------------------------------
# File names from the node


class UnsafeName(ValueError):
    pass


def safe_name(name: str | None) -> str:
    """Return ``name`` if it is a safe base name for a file in the current directory, else raise UnsafeName.

    Refused: no name, empty, ``.``, ``..``, a path separator (``/`` or ``\\``), NUL and any control
    character, bidi controls (which make ``exe.txt`` display as ``txt.exe``), line separators, lone
    surrogates, and names longer than 255 bytes in UTF-8.
    """
    if name is None or name == "":
        raise UnsafeName("the file has no name")
    if name in (".", ".."):
        raise UnsafeName(f"{name!r} is not a file name")
    if "/" in name or "\\" in name:
        raise UnsafeName("it contains a path separator")
    if "\x00" in name:
        raise UnsafeName("it contains a NUL character")
    for c in name:
        if _bad_char(c):
            raise UnsafeName(f"it contains the control character U+{ord(c):04X}")
    if len(name.encode("utf-8")) > NAME_MAX_BYTES:
        raise UnsafeName(f"it is longer than {NAME_MAX_BYTES} bytes")
    return name


# ---------------------------------------------------------------------------------------------------------
# Content-Disposition (RFC 6266, with RFC 5987 extended values)

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(
    r"\s*;\s*(" + _TOKEN + r")\s*=\s*(?:(" + _TOKEN + r")|\"((?:[^\"\\]|\\.)*)\")\s*", re.S
)
_EXT_VALUE = re.compile(r"([!#$&+^`{}~0-9A-Za-z-]+)'([A-Za-z0-9-]*)'((?:%[0-9A-Fa-f]{2}|[!#$&+.^_`|~0-9A-Za-z-])*)")


def _ext_value(value: str) -> str | None:
    m = _EXT_VALUE.fullmatch(value)
    if not m:
        return None
    charset = m.group(1).lower()
    if charset not in ("utf-8", "iso-8859-1"):
        return None
    try:
        return urllib.parse.unquote_to_bytes(m.group(3)).decode(charset)
    except UnicodeDecodeError:
        return None


def content_disposition_filename(value: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header carries, ``filename*`` preferred; None if none.

    Parameters that do not parse are ignored (RFC 6266 §4.3: fall back to ``filename``). The name is
    returned as sent: check it with :func:`safe_name` before using it.
    """
    if not value:
        return None
    m = re.match(r"\s*(" + _TOKEN + r")\s*", value)
    if not m:
        return None
    pos = m.end()
    params: dict[str, str] = {}
    while pos < len(value):
        p = _PARAM.match(value, pos)
        if not p:
            break  # a malformed tail: keep what parsed so far
        name = p.group(1).lower()
        raw = p.group(2) if p.group(2) is not None else re.sub(r"\\(.)", r"\1", p.group(3), flags=re.S)
        params.setdefault(name, raw)  # a repeated parameter: the first one counts
        pos = p.end()
    if "filename*" in params:
        ext = _ext_value(params["filename*"])
        if ext is not None:
            return ext
    return params.get("filename")


# ---------------------------------------------------------------------------------------------------------
# Where the node is


class Node:
    """Where to reach a node's API: ``url`` (ends with ``/``), ``token`` and, for errors, where they came from."""

    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.port = parts.port or 80
        self.base = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.token = token

    def path(self, route: str) -> str:
        return self.base + route


def _check_url(url: str, where: str) -> str:
    url = url.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises ValueError for a bad port
    except ValueError as e:
        raise CliError(f"{where}: not a valid URL ({e})", EXIT_USAGE) from None
    if parts.scheme != "http" or not parts.hostname:
        raise CliError(f"{where}: expected an API URL like http://127.0.0.1:3001/, got {printable(url)!r}", EXIT_USAGE)
    if parts.query or parts.fragment:
        raise CliError(f"{where}: the API URL must not have a query or fragment", EXIT_USAGE)
    return url if url.endswith("/") else url + "/"


def _read_token(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except FileNotFoundError:
        raise CliError(f"no API token: {fs_name(path)} does not exist ({what})", EXIT_NODE) from None
    except OSError as e:
        raise CliError(f"cannot read the API token {fs_name(path)}: {e.strerror}", EXIT_NODE) from None
    return _check_token(raw.decode("latin-1"), fs_name(path))


def _check_token(token: str, where: str) -> str:
    token = token.strip()
    if not token:
        raise CliError(f"the API token in {where} is empty", EXIT_NODE)
    if not re.fullmatch(r"[\x21-\x7e]+", token):
        raise CliError(f"the API token in {where} holds characters a token cannot have", EXIT_NODE)
    return token


def resolve_node(node: str | None, token_file: str | None, environ: Any = None) -> Node:
    """``--node DIR|URL`` (else ``$CAS_NODE``, else the default data dir of a node on port 3000) to a Node.

    A DIR gives ``DIR/api.url`` and ``DIR/api.token``; a URL needs ``--token-file`` or ``$CAS_TOKEN``.
    ``--token-file`` always wins.
    """
    env = os.environ if environ is None else environ
    where = "--node"
    if not node:
        node = env.get("CAS_NODE") or None
        where = "$CAS_NODE"
    if not node:
        node = default_data_dir(DEFAULT_PORT, env)
        where = "the default node"
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", node):
        url = _check_url(node, where)
        if token_file:
            token = _read_token(token_file, "--token-file")
        elif env.get("CAS_TOKEN"):
            token = _check_token(env["CAS_TOKEN"], "$CAS_TOKEN")
        else:
            raise CliError(f"no API token for {printable(url)}: give --token-file FILE or set $CAS_TOKEN", EXIT_NODE)
        return Node(url, token)
    if not os.path.isdir(node):
        raise CliError(
            f"no node data directory at {fs_name(node)} ({where}); start a node (twistd -n cas) or pass --node DIR|URL",
            EXIT_NODE,
        )
    url_path = os.path.join(node, "api.url")
    try:
        with open(url_path, "rb") as f:
            url_text = f.read(4096).decode("utf-8", "replace")
    except FileNotFoundError:
        raise CliError(f"{fs_name(url_path)} does not exist: is the node running?", EXIT_NODE) from None
    except OSError as e:
        raise CliError(f"cannot read {fs_name(url_path)}: {e.strerror}", EXIT_NODE) from None
    if not url_text.strip():
        raise CliError(f"{fs_name(url_path)} is empty: is the node running?", EXIT_NODE)
    url = _check_url(url_text, fs_name(url_path))
    token = _read_token(token_file or os.path.join(node, "api.token"), "--token-file" if token_file else "the node's data dir")
    return Node(url, token)


# ---------------------------------------------------------------------------------------------------------
# HTTP


def exit_code_for_status(status: int) -> int:
    if status == 400:
        return EXIT_USAGE
    if status in (401, 403):
        return EXIT_NODE
    if status == 404:
        return EXIT_NOT_FOUND
    return EXIT_FAILED


def _error_from_response(resp: http.client.HTTPResponse) -> CliError:
    """A CliError from an error answer: the API's one-line ``message`` when it sent one."""
    try:
        body = resp.read(64 << 10)
    except (OSError, http.client.HTTPException):
        body = b""
    message = None
    try:
        obj = json.loads(body)
        if isinstance(obj, dict) and isinstance(obj.get("message"), str) and obj["message"].strip():
            message = obj["message"]
            if isinstance(obj.get("error"), str):
                message = f"{message} ({obj['error']})"
    except ValueError:
        pass
    if message is None:
        message = f"the node answered HTTP {resp.status} {resp.reason}"
    return CliError(printable(" ".join(message.split()), 300), exit_code_for_status(resp.status))


class Client:
    """One request per connection (the CLI makes one or two): small and predictable."""

    def __init__(self, node: Node, timeout: float | None) -> None:
        self.node = node
        self.timeout = timeout

    def connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.node.host, self.node.port, timeout=self.timeout)
        try:
            conn.connect()
        except ConnectionRefusedError:
            raise CliError(f"cannot reach the node at {printable(self.node.url)}: connection refused (is it running?)", EXIT_NODE) from None
        except socket.gaierror as e:
            raise CliError(f"cannot reach the node at {printable(self.node.url)}: {e.strerror or e}", EXIT_NODE) from None
        except TimeoutError:
            raise CliError(f"cannot reach the node at {printable(self.node.url)}: timed out (is it running?)", EXIT_NODE) from None
        except OSError as e:
            raise CliError(f"cannot reach the node at {printable(self.node.url)}: {e.strerror or e} (is it running?)", EXIT_NODE) from None
        return conn

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.node.token}", "User-Agent": USER_AGENT, "Accept": "application/json, */*"}
        h.update(extra or {})
        return h

    def request(
        self, method: str, route: str, headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self.connect()
        try:
            conn.request(method, self.node.path(route), headers={**self._headers(), **(headers or {})})
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self._lost(e) from None

    def json(self, method: str, route: str, ok: tuple[int, ...] = (200,)) -> Any:
        conn, resp = self.request(method, route)
        try:
            return read_json(resp, ok)
        finally:
            conn.close()

    def _lost(self, e: BaseException) -> CliError:
        if isinstance(e, TimeoutError):
            return CliError(f"the node at {printable(self.node.url)} did not answer in time", EXIT_FAILED)
        if isinstance(e, http.client.RemoteDisconnected):
            return CliError(f"the node at {printable(self.node.url)} closed the connection without an answer", EXIT_FAILED)
        detail = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return CliError(f"lost the connection to the node at {printable(self.node.url)}: {printable(detail)}", EXIT_FAILED)

    def upload(
        self, route: str, source: IO[bytes], size: int | None, content_type: str | None, progress: Callable[[int], None],
        method: str = "POST", headers: dict[str, str] | None = None, ok: tuple[int, ...] = (201,),
    ) -> Any:
        """POST ``source`` in 1 MiB chunks: with Content-Length when ``size`` is known, else chunked.

        Before each chunk it looks whether the node already answered (a rejection before the body: 401,
        413, 507), so that answer is read instead of being lost in a reset connection.
        """
        conn = self.connect()
        try:
            conn.putrequest(method, self.node.path(route), skip_accept_encoding=True)
            extra = {"Content-Type": content_type} if content_type else {}
            extra.update(headers or {})
            if size is None:
                extra["Transfer-Encoding"] = "chunked"
            else:
                extra["Content-Length"] = str(size)
            for k, v in self._headers(extra).items():
                conn.putheader(k, v)
            conn.endheaders()
            sent = 0
            try:
                if size is not None and _sendfile_ok(source):
                    # A regular file: the kernel copies page cache -> socket (no read into Python, no send copy).
                    offset = source.tell()
                    while sent < size:
                        if _answered_early(conn.sock):
                            break
                        n = conn.sock.sendfile(source, offset + sent, min(SENDFILE_SLICE, size - sent))
                        if not n:
                            raise CliError(f"the input shrank while it was sent ({size - sent} bytes missing); nothing was stored", EXIT_FAILED)
                        sent += n
                        progress(n)
                    resp = conn.getresponse()
                    return read_json(resp, ok)
                for chunk in _chunks(source, size):
                    if _answered_early(conn.sock):
                        break
                    if size is None:
                        conn.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    else:
                        conn.send(chunk)
                    sent += len(chunk)
                    progress(len(chunk))
                else:
                    if size is None:
                        conn.send(b"0\r\n\r\n")
            except OSError as send_error:
                # The node may have answered and closed: its answer says why.
                try:
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    raise self._lost(send_error) from None
                return read_json(resp, ok)
            resp = conn.getresponse()
            return read_json(resp, ok)
        except (OSError, http.client.HTTPException) as e:
            raise self._lost(e) from None
        finally:
            conn.close()


SENDFILE_SLICE = 8 << 20


def _sendfile_ok(source: IO[bytes]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(source.fileno()).st_mode) and hasattr(os, "sendfile")
    except (OSError, ValueError, AttributeError):
        return False


def _answered_early(sock: socket.socket | None) -> bool:
    """True when the node sent something other than an interim 1xx answer (or closed) mid-upload."""
    if sock is None:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        head = sock.recv(16, socket.MSG_PEEK)
    except OSError:
        return True
    return not re.match(rb"HTTP/1\.[01] 1\d\d", head)


def _chunks(source: IO[bytes], size: int | None) -> Iterator[bytes]:
    """Read ``source`` in 1 MiB chunks; exactly ``size`` bytes when it is known."""
    left = size
    while left is None or left > 0:
        want = CHUNK if left is None else min(CHUNK, left)
        try:
            chunk = source.read(want)
        except OSError as e:
            raise CliError(f"cannot read the input: {e.strerror or e}", EXIT_FAILED) from None
        if not chunk:
            if left is not None:
                raise CliError(f"the input shrank while it was sent ({left} bytes missing); nothing was stored", EXIT_FAILED)
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


def read_json(resp: http.client.HTTPResponse, ok: tuple[int, ...]) -> Any:
    if resp.status not in ok:
        raise _error_from_response(resp)
    body = resp.read(MAX_JSON + 1)
    if len(body) > MAX_JSON:
        raise CliError("the node's answer is too large", EXIT_FAILED)
    try:
        return json.loads(body)
    except ValueError:
        raise CliError(f"the node's answer (HTTP {resp.status}) is not JSON", EXIT_FAILED) from None


# ---------------------------------------------------------------------------------------------------------
# Output


def write_stdout(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
    except BrokenPipeError:
        raise StdoutClosed() from None


def print_out(text: str = "") -> None:
    write_stdout((text + "\n").encode("utf-8", "surrogateescape"))


def print_json(obj: Any) -> None:
    print_out(json.dumps(obj, sort_keys=True))


def flush_stdout() -> None:
    try:
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise StdoutClosed() from None


class Progress:
    """A tqdm bar on stderr when stderr is a terminal; nothing (and no tqdm import) otherwise."""

    def __init__(self, total: int | None, desc: str | None, enabled: bool) -> None:
        self.bar = None
        if enabled and _stderr_is_tty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=printable(desc, 40) if desc else None, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.2,
            )

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h or d) + [f"{m}m"] * bool(m or h or d) + [f"{s}s"]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Keys


def read_key(args: argparse.Namespace) -> str:
    """The key: the argument, else the first line of --key-file, else of stdin (a terminal: prompt, no echo).

    Validated locally (exit 2) before the node is contacted. The key is never shown in a message.
    """
    if args.key is not None and args.key_file is not None:
        raise CliError("give the key either as an argument or with --key-file, not both", EXIT_USAGE)
    if args.key is not None and args.key != "-":
        text = args.key
    elif args.key_file is not None or args.key == "-":
        if args.key == "-" or args.key_file == "-":
            text = _first_line(sys.stdin.buffer, "stdin")
        else:
            try:
                with open(args.key_file, "rb") as f:
                    text = _first_line(f, fs_name(args.key_file))
            except OSError as e:
                raise CliError(f"cannot read the key file {fs_name(args.key_file)}: {e.strerror}", EXIT_USAGE) from None
    elif sys.stdin is not None and sys.stdin.isatty():
        try:
            text = getpass.getpass("cas key: ")
        except EOFError:
            text = ""
    else:
        text = _first_line(sys.stdin.buffer, "stdin") if sys.stdin is not None else ""
    if not text.strip():
        raise CliError("no key given (as an argument, with --key-file FILE, or on stdin)", EXIT_USAGE)
    from cas.base.errors import MalformedKey
    from cas.content.capability import ReadCap  # only now: it loads blake3 and the cipher

    try:
        return str(ReadCap.parse(text))
    except MalformedKey as e:
        raise CliError(printable(str(e)), EXIT_USAGE) from None


def _first_line(f: IO[bytes], where: str) -> str:
    try:
        line = f.readline(MAX_KEY_LINE)
    except OSError as e:
        raise CliError(f"cannot read the key from {where}: {e.strerror}", EXIT_USAGE) from None
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError("not a cas key: it is not text", EXIT_USAGE) from None


# ---------------------------------------------------------------------------------------------------------
# Commands

_COMPRESSED_TYPES = {
    "gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
    "compress": "application/x-compress", "br": "application/x-brotli",
}


def guess_type(path: str) -> str:
    """The MIME type for a file name; ``application/octet-stream`` when unknown."""
    typ, encoding = mimetypes.guess_type(path, strict=False)
    if encoding:
        return _COMPRESSED_TYPES.get(encoding, "application/octet-stream")
    return typ or "application/octet-stream"


def _check_content_type(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e]*)?", value):
        raise CliError(f"--type {printable(value)!r} is not a MIME type like text/plain", EXIT_USAGE)
    return value


def cmd_put(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    content_type = _check_content_type(args.type) if args.type else None
    if not 0 <= args.min_replicas <= 64:
        raise CliError("--min-replicas must be between 0 and 64", EXIT_USAGE)
    if args.path == "-":
        source: IO[bytes] = sys.stdin.buffer
        name = args.name
        size = None
        close = False
    else:
        try:
            source = open(args.path, "rb")
        except FileNotFoundError:
            raise CliError(f"{fs_name(args.path)}: no such file", EXIT_USAGE) from None
        except IsADirectoryError:
            raise CliError(f"{fs_name(args.path)} is a directory (cas stores files)", EXIT_USAGE) from None
        except OSError as e:
            raise CliError(f"cannot open {fs_name(args.path)}: {e.strerror}", EXIT_USAGE) from None
        close = True
        st = os.fstat(source.fileno())
        if stat.S_ISDIR(st.st_mode):
            source.close()
            raise CliError(f"{fs_name(args.path)} is a directory (cas stores files)", EXIT_USAGE)
        regular = stat.S_ISREG(st.st_mode)
        size = st.st_size if regular else None  # a pipe or device (<(cmd) is /dev/fd/63): chunked, no name
        default_name = os.path.basename(os.path.normpath(args.path)) if regular else None
        name = args.name if args.name is not None else default_name
        if content_type is None:
            content_type = guess_type(args.path)
    if args.resume:
        if not close or size is None:
            if close:
                source.close()
            raise CliError("--resume needs a regular file (a pipe cannot be read again)", EXIT_USAGE)
        try:
            answer = _put_resumable(args, client_for, source, size, name, content_type or "application/octet-stream")
        finally:
            source.close()
        return _put_done(args, answer)
    try:
        if content_type is None:
            content_type = "application/octet-stream"
        query = {}
        if name:
            query["name"] = name
        if args.min_replicas:
            query["min_replicas"] = str(args.min_replicas)
        route = "v1/files" + ("?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="") if query else "")
        client = client_for()
        progress = Progress(size, name or "stdin", not args.quiet)
        try:
            answer = client.upload(route, source, size, content_type, progress)
        finally:
            progress.close()
    finally:
        if close:
            source.close()
    return _put_done(args, answer)


def _put_done(args: argparse.Namespace, answer: Any) -> int:
    if not isinstance(answer, dict) or not isinstance(answer.get("key"), str):
        raise CliError("the node's answer has no key", EXIT_FAILED)
    if args.json:
        print_json(answer)
    else:
        print_out(printable(answer["key"], 1000))
    return EXIT_OK


def _put_resumable(
    args: argparse.Namespace, client_for: Callable[[], Client], source: IO[bytes], size: int, name: str | None,
    content_type: str,
) -> Any:
    """``cas put --resume``: a resumable upload (``/v1/uploads``) remembered in a state file, so that the same
    command after an interruption continues where the node stands instead of starting over."""
    import hashlib

    client = client_for()
    st = os.fstat(source.fileno())
    ident = json.dumps([client.node.url, os.path.realpath(args.path), size, st.st_mtime_ns, name, content_type,
                        args.min_replicas])
    state = os.path.join(state_dir(), "uploads", hashlib.sha256(ident.encode()).hexdigest()[:32] + ".json")
    sid = None
    offset = 0
    try:
        with open(state) as f:
            sid = json.load(f)["id"]
        if not isinstance(sid, str) or not re.fullmatch(r"[0-9a-f]{32}", sid):
            sid = None
    except (OSError, ValueError, KeyError, TypeError):
        sid = None
    if sid is not None:
        conn, resp = client.request("GET", "v1/uploads/" + sid)
        try:
            if resp.status == 404:
                sid = None  # expired, or ended: start again
            else:
                info = read_json(resp, (200,))
                offset = int(info["offset"])
        finally:
            conn.close()
    if sid is None:
        query = {"name": name or ""}
        if args.min_replicas:
            query["min_replicas"] = str(args.min_replicas)
        conn, resp = client.request(
            "POST", "v1/uploads?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe=""),
            {"Content-Type": content_type},
        )
        try:
            sid = read_json(resp, (201,))["id"]
        finally:
            conn.close()
        os.makedirs(os.path.dirname(state), mode=0o700, exist_ok=True)
        tmp = state + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"id": sid, "path": os.path.realpath(args.path)}, f)
        os.replace(tmp, state)
    if not 0 <= offset <= size:
        raise CliError(f"the node's upload stands at byte {offset}, past the end of this {size}-byte file", EXIT_FAILED)
    source.seek(offset)
    rng = f"bytes {offset}-{size - 1}/{size}" if offset < size else f"bytes */{size}"
    progress = Progress(size, name or os.path.basename(args.path), not args.quiet)
    progress(offset)
    try:
        answer = client.upload("v1/uploads/" + sid, source, size - offset, None, progress, method="PUT",
                               headers={"Content-Range": rng})
    except CliError as e:
        raise CliError(f"{e}; the upload can continue: run the same command again", e.code) from None
    finally:
        progress.close()
    try:
        os.unlink(state)
    except OSError:
        pass
    return answer


def cmd_get(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    if args.output == "-" and args.json:
        raise CliError("--json writes to stdout: it cannot be used with -o -", EXIT_USAGE)
    key = read_key(args)
    client = client_for()
    route = "v1/files/" + key
    tag = _partial_tag(key)
    # With a partial file of this key in the target directory, HEAD first: the node then streams nothing that
    # the Range request that follows would not need (a GET cut short still sets the node fetching blocks).
    probe = _Sink.partial_may_exist(args.output, tag)
    conn, resp = client.request("HEAD" if probe else "GET", route)
    try:
        if resp.status != 200:
            raise _error_from_response(resp)
        length = _content_length(resp)
        name = content_disposition_filename(resp.getheader("Content-Disposition"))
        content_type = resp.getheader("Content-Type")
        etag = resp.getheader("ETag")
        sink = _Sink.open(args.output, name, args.force, tag)
        progress = Progress(None, None, False)
        resumed = 0
        try:
            if sink.offset and (length is None or sink.offset > length or etag is None):
                sink.restart()  # cannot tell where it stood, or longer than the file: start again
            if sink.offset and sink.offset == length:
                resumed = sink.offset  # complete already (cut short before the rename)
                received = length
            else:
                if not sink.offset and probe:  # the partial file was elsewhere, or just dropped: the whole file
                    conn.close()
                    conn, resp = client.request("GET", route)
                    if resp.status != 200:
                        raise _error_from_response(resp)
                    if _content_length(resp) != length or resp.getheader("ETag") != etag:
                        raise CliError("the node answered the download with another file", EXIT_FAILED)
                elif sink.offset:
                    # An earlier download of this key to this place was cut short: ask for the rest only.
                    conn.close()
                    conn, resp = client.request("GET", route, {"Range": f"bytes={sink.offset}-", "If-Range": etag or ""})
                    if resp.status == 206:
                        expected = f"bytes {sink.offset}-{length - 1}/{length}" if length else None
                        if (resp.getheader("Content-Range") or "").strip() != expected:
                            raise CliError("the node answered the resumed download with another range", EXIT_FAILED)
                        resumed = sink.offset
                    elif resp.status == 200:
                        sink.restart()
                    else:
                        raise _error_from_response(resp)
                progress = Progress(length, sink.label, not args.quiet)
                progress(resumed)
                received = resumed + _copy_body(resp, sink, progress, client)
            if length is not None and received != length:
                raise CliError(
                    f"incomplete download: {received} of {length} bytes arrived; {sink.discarded()}", EXIT_FAILED
                )
            sink.commit()
        except BaseException:
            progress.close()
            sink.abort()
            raise
        progress.close()
    finally:
        conn.close()
    if args.json:
        out = {"path": sink.path, "size": received, "name": name, "content_type": content_type}
        if resumed:
            out["resumed_from"] = resumed
        print_json(out)
    return EXIT_OK


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    length_header = resp.getheader("Content-Length")
    chunked = "chunked" in (resp.getheader("Transfer-Encoding") or "").lower()
    if length_header is not None:
        if not re.fullmatch(r"\s*\d+\s*", length_header):
            raise CliError("the node sent a bad Content-Length", EXIT_FAILED)
        return int(length_header)
    if not chunked:
        raise CliError("the node sent no Content-Length: a complete download cannot be told from a cut one", EXIT_FAILED)
    return None


def _partial_tag(key: str) -> str:
    """Names the partial file of a download of ``key``: the same key resumes it, another never touches it.
    64 bits of a hash: the file name says nothing usable about the key."""
    import hashlib

    return hashlib.sha256(b"cas/partial-download/v1\0" + key.encode("ascii")).hexdigest()[:16]


def _copy_body(resp: http.client.HTTPResponse, sink: "_Sink", progress: Progress, client: Client) -> int:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    received = 0
    while True:
        try:
            n = resp.readinto(buf)
        except http.client.IncompleteRead:
            raise CliError(f"incomplete download: the node closed the connection mid-file; {sink.discarded()}", EXIT_FAILED) from None
        except (OSError, http.client.HTTPException) as e:
            detail = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise CliError(
                f"download aborted by the node ({printable(detail)}): the data may be corrupt; {sink.discarded()}",
                EXIT_FAILED,
            ) from None
        if not n:
            return received
        sink.write(view[:n])
        received += n
        progress(n)


class _Sink:
    """Where a download goes: stdout, or a temporary file renamed into place once it is complete."""

    def __init__(
        self, path: str | None, final: str | None, fd: int | None, tmp: str | None, force: bool, offset: int = 0,
    ) -> None:
        self.path = path  # absolute path for --json, "-" for stdout
        self.final = final
        self.fd = fd
        self.tmp = tmp
        self.force = force
        self.offset = offset  # bytes already in the partial file from an earlier, interrupted download
        self.label = os.path.basename(final) if final else None
        self.written = 0  # bytes written to fd
        self.started = 0  # bytes whose write-back was started
        self.write_behind = _write_behind() if tmp is not None else None

    @classmethod
    def open(cls, output: str | None, name: str | None, force: bool, tag: str = "") -> "_Sink":
        if output == "-":
            return cls("-", None, None, None, force)
        if output is None or os.path.isdir(output):
            try:
                base = safe_name(name)
            except UnsafeName as e:
                shown = "" if name is None else f" {printable(name, 80)!r}"
                raise CliError(f"refusing the file name{shown} from the node: {e}; choose one with -o PATH", EXIT_USAGE) from None
            target = base if output is None else os.path.join(output, base)
        elif output.endswith(("/", os.sep)):
            raise CliError(f"{fs_name(output)}: no such directory", EXIT_USAGE)
        else:
            target = output
        final = os.path.abspath(target)
        exists = os.path.lexists(final)  # a symlink, even dangling, counts: it is never written through
        try:
            st = os.stat(final) if exists else None
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise CliError(f"cannot write {fs_name(target)}: {e.strerror}", EXIT_FAILED) from None
        if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            # A device or a pipe (-o /dev/null, a FIFO): written in place, there is no file to protect.
            try:
                fd = os.open(final, os.O_WRONLY)
            except OSError as e:
                raise CliError(f"cannot write {fs_name(target)}: {e.strerror}", EXIT_FAILED) from None
            return cls(final, None, fd, None, force)
        if exists and not force:
            raise CliError(f"{fs_name(target)} already exists; use --force to replace it, or -o PATH", EXIT_USAGE)
        directory = os.path.dirname(final)
        prefix = "." + _truncate_utf8(os.path.basename(final), 100) + ".cas-partial-"
        if not tag:
            try:
                fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
            except OSError as e:
                raise CliError(f"cannot write in {fs_name(directory)}: {e.strerror}", EXIT_FAILED) from None
            return cls(final, final, fd, tmp, force)
        # One partial file per (target, key): an interrupted download is kept there and resumed.
        tmp = os.path.join(directory, prefix + tag)
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
                offset = 0
            except FileExistsError:
                fd = os.open(tmp, os.O_WRONLY | nofollow)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    os.close(fd)
                    raise CliError(f"{fs_name(tmp)} is in the way and is not a file", EXIT_FAILED) from None
                offset = os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            raise CliError(f"cannot write in {fs_name(directory)}: {e.strerror}", EXIT_FAILED) from None
        return cls(final, final, fd, tmp, force, offset)

    @staticmethod
    def partial_may_exist(output: str | None, tag: str) -> bool:
        """Whether the directory a download to ``output`` goes to holds a partial file of this key (``tag``)."""
        if output == "-":
            return False
        if output is None:
            directory = "."
        elif os.path.isdir(output):
            directory = output
        else:
            directory = os.path.dirname(os.path.abspath(output))
        suffix = ".cas-partial-" + tag
        try:
            with os.scandir(directory) as entries:
                return any(e.name.startswith(".") and e.name.endswith(suffix) for e in entries)
        except OSError:
            return False  # _Sink.open reports what is wrong with the directory

    def restart(self) -> None:
        """Drop what an earlier download left in the partial file."""
        if self.fd is not None and self.tmp is not None:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        self.offset = 0

    def write(self, data: memoryview) -> None:
        if self.fd is None:
            write_stdout(data)
            return
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
                self.written += n
            if self.write_behind is not None and self.written - self.started >= WRITE_BEHIND:
                # Start writing back what is behind us now, so the fsync before the rename has little left.
                self.write_behind(self.fd, self.offset + self.started, self.written - self.started)
                self.started = self.written
        except OSError as e:
            raise CliError(f"cannot write {fs_name(self.final or self.path or '')}: {e.strerror}", EXIT_FAILED) from None

    def discarded(self) -> str:
        if self.fd is None:
            return "what was written to stdout is incomplete"
        if self.tmp is None:
            return f"what was written to {fs_name(self.path or '')} is incomplete"
        if self.offset + self.written:
            return (f"the {self.offset + self.written} bytes received are kept in {fs_name(self.tmp)}: "
                    "run the same command again to resume")
        return "no file was written"

    def commit(self) -> None:
        if self.fd is None:
            flush_stdout()
            return
        fd, self.fd = self.fd, None
        try:
            if self.tmp is None:
                os.close(fd)
                return
            try:
                os.fchmod(fd, 0o666 & ~_umask())
            except OSError:
                pass
            os.fsync(fd)
            os.close(fd)
        except OSError as e:
            self.fd = None
            raise CliError(f"cannot write {fs_name(self.final or '')}: {e.strerror}", EXIT_FAILED) from None
        assert self.final is not None
        try:
            if self.force:
                os.replace(self.tmp, self.final)
            else:
                self._link_no_replace()
        except FileExistsError:
            raise CliError(f"{fs_name(self.final)} appeared while downloading; use --force to replace it", EXIT_USAGE) from None
        except OSError as e:
            raise CliError(f"cannot write {fs_name(self.final)}: {e.strerror}", EXIT_FAILED) from None
        self.tmp = None
        _fsync_dir(os.path.dirname(self.final))

    def _link_no_replace(self) -> None:
        assert self.tmp is not None and self.final is not None
        try:
            os.link(self.tmp, self.final)  # fails if the name was taken meanwhile
        except FileExistsError:
            raise
        except OSError:
            # A file system without hard links: check then rename (a small race, no worse than cp -n).
            if os.path.lexists(self.final):
                raise FileExistsError() from None
            os.rename(self.tmp, self.final)
            return
        os.unlink(self.tmp)

    def abort(self) -> None:
        """The download failed or was interrupted: keep what arrived for a later resume (if anything did)."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.tmp is not None and not (self.offset + self.written):
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
        self.tmp = None


WRITE_BEHIND = 16 << 20  # start write-back of a download file every this many bytes


def _write_behind() -> Callable[[int, int, int], int] | None:
    """Linux's sync_file_range(SYNC_FILE_RANGE_WRITE): start write-back of a range without waiting for it.

    A download ends with an fsync (a file renamed into place must be complete on disk). Left alone, the
    kernel holds gigabytes dirty and that fsync takes seconds; started as we go, it finds little left.
    Elsewhere (or if the call is missing) None: the final fsync does all the work, as before.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError, ImportError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    sync_file_range_write = 2

    def start(fd: int, offset: int, length: int) -> int:
        # Advisory: a failure here (an exotic file system) is not an error, the final fsync still reports any.
        return int(call(fd, offset, length, sync_file_range_write))

    return start


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8", "surrogateescape")[:limit]
    return data.decode("utf-8", "ignore")


def cmd_ls(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    answer = client_for().json("GET", "v1/files")
    files = answer.get("files") if isinstance(answer, dict) else None
    if not isinstance(files, list):
        raise CliError("the node's file list is not in the expected form", EXIT_FAILED)
    if args.json:
        print_json(answer)
        return EXIT_OK
    rows = []
    for f in files:
        if not isinstance(f, dict):
            continue
        size = f.get("size")
        name = f.get("name")
        rows.append((
            printable(str(f.get("key", "?")), 1000),
            str(size) if isinstance(size, int) else "-",
            printable(name, 1000) if isinstance(name, str) and name else "-",
        ))
    if sys.stdout.isatty() and rows:
        rows.insert(0, ("KEY", "SIZE", "NAME"))
    width = max((len(r[1]) for r in rows), default=0)
    for key, size, name in rows:
        print_out(f"{key}  {size.rjust(width)}  {name}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    client = client_for()
    answer = client.json("GET", "v1/status")
    if not isinstance(answer, dict):
        raise CliError("the node's status is not in the expected form", EXIT_FAILED)
    if args.json:
        print_json(answer)
        return EXIT_OK
    storage = answer.get("storage") if isinstance(answer.get("storage"), dict) else {}

    def size(v: Any) -> str:
        return human_size(v) if isinstance(v, int) else "none"

    uptime = answer.get("uptime")
    lines = [
        ("node", printable(str(answer.get("node_id", "?")))),
        ("version", printable(str(answer.get("version", "?")))),
        ("api", printable(client.node.url)),
        ("uptime", human_duration(uptime) if isinstance(uptime, (int, float)) else "?"),
        ("files", printable(str(answer.get("files", "?")))),
        ("used", size(storage.get("used"))),
        ("free", size(storage.get("free"))),
        ("limit", size(storage.get("limit"))),
    ]
    for label, value in lines:
        print_out(f"{label + ':':9}{value}")
    return EXIT_OK


def cmd_peers(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    answer = client_for().json("GET", "v1/peers")
    peers = answer.get("peers") if isinstance(answer, dict) else None
    if not isinstance(peers, list):
        raise CliError("the node's peer table is not in the expected form", EXIT_FAILED)
    if args.json:
        print_json(answer)
        return EXIT_OK
    rows = []
    for p in peers:
        if not isinstance(p, dict):
            continue
        rtt = p.get("rtt_ms")
        seen = p.get("last_seen")
        addresses = p.get("addresses") if isinstance(p.get("addresses"), list) else []
        rows.append((
            printable(str(p.get("node_id", "?")), 200),
            printable(str(p.get("state", "?")), 20),
            f"{rtt:.1f}ms" if _finite(rtt) else "-",
            human_duration(max(0.0, time.time() - seen)) + " ago" if _finite(seen) else "never",
            printable(" ".join(str(a) for a in addresses), 300) or "-",
        ))
    if sys.stdout.isatty() and rows:
        rows.insert(0, ("NODE", "STATE", "RTT", "SEEN", "ADDRESSES"))
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
    for r in rows:
        print_out("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
    return EXIT_OK


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def cmd_rm(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    key = read_key(args)
    answer = client_for().json("DELETE", "v1/files/" + key)
    if args.json:
        print_json(answer)
        return EXIT_OK
    if not isinstance(answer, dict):
        raise CliError("the node's answer is not in the expected form", EXIT_FAILED)
    blocks, freed = answer.get("blocks_freed"), answer.get("bytes_freed")
    print_out(f"forgotten: {blocks if isinstance(blocks, int) else '?'} blocks, {size_or_q(freed)} freed")
    return EXIT_OK


def size_or_q(v: Any) -> str:
    return human_size(v) if isinstance(v, int) else "?"


# ---------------------------------------------------------------------------------------------------------
# Argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``cas: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)", EXIT_USAGE)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            raise CliError(message.strip().removeprefix(f"{self.prog}: ").removeprefix("error: "), status or EXIT_USAGE)
        raise SystemExit(status)


def _timeout(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value or None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("node options (before or after the command)")
    g.add_argument("--node", metavar="DIR|URL", default=argparse.SUPPRESS,
                   help="the node's data dir (reads api.url and api.token) or its API URL "
                        "(default: $CAS_NODE, else $XDG_DATA_HOME/cas/node-3000)")
    g.add_argument("--token-file", metavar="FILE", default=argparse.SUPPRESS,
                   help="the API token (default: DIR/api.token, or $CAS_TOKEN with a URL)")
    g.add_argument("--timeout", metavar="SECONDS", type=_timeout, default=argparse.SUPPRESS,
                   help=f"give up when the node is silent this long (default {DEFAULT_TIMEOUT:g}; 0: never)")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar")

    parser = _Parser(prog="cas", parents=[common], description="Store and fetch files on a cas node.",
                     epilog="Exit codes: 0 ok, 1 failed, 2 usage/bad key/refused name/file exists, "
                            "3 not found, 4 node unreachable or unauthorized. See docs/cli.md.")
    from cas import __version__

    parser.add_argument("--version", action="version", version=f"cas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def key_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("key", metavar="KEY", nargs="?", default=None,
                       help="the key cas put printed; - or none: the first line of stdin (or of --key-file)")
        p.add_argument("--key-file", metavar="FILE", default=None,
                       help="read the key from the first line of FILE (- for stdin), so it is not in the process list")

    p = sub.add_parser("put", parents=[common], help="store a file; prints its key",
                       description="Store a file on the node and print its key (only the key) on stdout.")
    p.add_argument("path", metavar="PATH|-", help="the file to store; - reads stdin")
    p.add_argument("--name", default=None, help="the name to record (default: the base name of PATH; none for -)")
    p.add_argument("--type", metavar="MIME", default=None,
                   help="the content type (default: guessed from PATH, else application/octet-stream)")
    p.add_argument("--min-replicas", metavar="K", type=int, default=0,
                   help="fail unless every block reaches at least K holders besides the node (default 0: the "
                        "node places as many as it can, up to its --replicas, and reports the count)")
    p.add_argument("--resume", action="store_true",
                   help="a resumable upload: if it is cut short, the same command continues where the node stands "
                        "(PATH must be a regular file)")
    p.add_argument("--json", action="store_true", help="print the node's JSON answer (with the replica count) instead of the key")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", parents=[common], help="fetch a file by its key",
                       description="Fetch a file. Without -o it is saved under its original name in the current "
                                   "directory (a safe base name only, never replacing a file without --force).")
    key_options(p)
    p.add_argument("-o", "--output", metavar="PATH|-", default=None,
                   help="write to PATH (into it, under the original name, if PATH is a directory); - for stdout")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing file")
    p.add_argument("--json", action="store_true", help='print {"path", "size", "name", "content_type"} when done')
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("ls", parents=[common], help="list the files stored on the node",
                       description="List the owner's files, oldest first: key, size in bytes, name.")
    p.add_argument("--json", action="store_true", help="print the node's JSON answer")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("status", parents=[common], help="show the node's status")
    p.add_argument("--json", action="store_true", help="print the node's JSON answer")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("peers", parents=[common], help="show the node's peer table",
                       description="One line per known peer: node id, state (new, connected, alive, suspect, dead), "
                       "round-trip time, last contact, addresses.")
    p.add_argument("--json", action="store_true", help="print the node's JSON answer")
    p.set_defaults(func=cmd_peers)

    p = sub.add_parser("rm", parents=[common], help="forget a file (its blocks are freed)")
    key_options(p)
    p.add_argument("--json", action="store_true", help="print the node's JSON answer")
    p.set_defaults(func=cmd_rm)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name, default in (("node", None), ("token_file", None), ("timeout", DEFAULT_TIMEOUT), ("quiet", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


# ---------------------------------------------------------------------------------------------------------
# Entry point


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    node: list[Node] = []

    def client_for() -> Client:
        if not node:
            node.append(resolve_node(args.node, args.token_file))
        return Client(node[0], args.timeout)

    return args.func(args, client_for)


def main(argv: list[str] | None = None) -> int:
    """The ``cas`` command. Returns the exit code; errors are one line on stderr, never a traceback."""
    if argv is None:
        argv = sys.argv[1:]
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        try:
            code = run(argv)
            flush_stdout()
            return code
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    except CliError as e:
        _error(str(e))
        return e.code
    except StdoutClosed:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    except Exception as e:  # a bug: still one line, with the exception type to report it
        _error(f"internal error: {type(e).__name__}: {printable(str(e))}")
        return EXIT_FAILED


def _error(message: str) -> None:
    line = "cas: " + " ".join(message.split()) + "\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def entry() -> NoReturn:
    """The ``cas`` console script (and ``python -m cas.cli``): ``main``, then out without the interpreter's
    finalization. By the time ``main`` returns the command has closed or renamed its files and written its
    output; what Python would still do (tear down every module, collect garbage one last time) took about 20 ms
    here with the cipher loaded, for every command of a shell pipeline. atexit handlers do not run: the CLI
    registers none."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # stdout gone (EPIPE) or closed: the exit code already says so
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
