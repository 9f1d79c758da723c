"""The HTTP client of a node's API: where the node is (data dir or URL, token), requests with the standard
library's ``http.client``, uploads streamed from a file (sendfile) or a pipe, one-line errors from answers."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import stat
import urllib.parse
from typing import IO, Any, Callable, Iterator

from cas.cli.exits import EXIT_FAILED, EXIT_NODE, EXIT_NOT_FOUND, EXIT_USAGE, CliError
from cas.cli.files import fs_name
from cas.cli.output import printable
from cas.store.paths import default_data_dir

CHUNK = 1 << 20
DEFAULT_PORT = 3000
DEFAULT_TIMEOUT = 300.0
MAX_JSON = 16 << 20  # the largest JSON answer read (a long `ls`)
USER_AGENT = "cas-cli"


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


def exit_code_for_status(status: int) -> int:
    if status == 400:
        return EXIT_USAGE
    if status in (401, 403):
        return EXIT_NODE
    if status == 404:
        return EXIT_NOT_FOUND
    return EXIT_FAILED


def error_from_response(resp: http.client.HTTPResponse) -> CliError:
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
        raise error_from_response(resp)
    body = resp.read(MAX_JSON + 1)
    if len(body) > MAX_JSON:
        raise CliError("the node's answer is too large", EXIT_FAILED)
    try:
        return json.loads(body)
    except ValueError:
        raise CliError(f"the node's answer (HTTP {resp.status}) is not JSON", EXIT_FAILED) from None
