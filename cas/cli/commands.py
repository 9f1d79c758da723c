"""The commands: ``put`` (plain and resumable), ``get``, ``ls``, ``status``, ``peers``, ``rm``, and reading
the key a command acts on. Each takes the parsed arguments and a function that returns the node's client."""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import math
import os
import re
import stat
import sys
import time
import urllib.parse
from typing import IO, Any, Callable

from cas.cli.client import CHUNK, Client, error_from_response, read_json
from cas.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from cas.cli.files import Sink, check_content_type, content_disposition_filename, fs_name, guess_type
from cas.cli.output import (
    Progress,
    human_duration,
    human_size,
    human_time,
    print_err,
    print_json,
    print_out,
    printable,
    size_or_q,
)
from cas.store.paths import state_dir

MAX_KEY_LINE = 4096


def read_key(args: argparse.Namespace, allow_root: bool = False) -> str:
    """The key: the argument, else the first line of --key-file, else of stdin (a terminal: prompt, no echo).
    With ``allow_root``, a file's root id (its verify capability) is taken too.

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

    if allow_root and text.strip().startswith("b") and len(text.strip()) == 59:
        from cas.base.cid import CID

        try:
            return str(CID.parse(text.strip()))
        except (MalformedKey, ValueError) as e:
            raise CliError(f"not a root id: {printable(str(e))}", EXIT_USAGE) from None
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


def cmd_put(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    content_type = check_content_type(args.type) if args.type else None
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
    shortfall = replica_shortfall(answer)
    if shortfall:
        print_err(shortfall)
    return EXIT_OK


def replica_shortfall(answer: dict[str, Any]) -> str | None:
    """One line when fewer holders than the node's ``--replicas`` acknowledged the file: the put succeeded (the
    file is stored on the node) but is not yet as durable as asked, and the user must not take it for so."""
    got, wanted = answer.get("replicas"), answer.get("replicas_wanted")
    if not (type(got) is int and type(wanted) is int and 0 <= got < wanted):
        return None
    return (f"stored here and on {got} of {wanted} peers; the rest will be placed when peers are available; "
            "see `cas status KEY`")


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
    probe = Sink.partial_may_exist(args.output, tag)
    conn, resp = client.request("HEAD" if probe else "GET", route)
    try:
        if resp.status != 200:
            raise error_from_response(resp)
        length = _content_length(resp)
        name = content_disposition_filename(resp.getheader("Content-Disposition"))
        content_type = resp.getheader("Content-Type")
        etag = resp.getheader("ETag")
        sink = Sink.open(args.output, name, args.force, tag)
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
                        raise error_from_response(resp)
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
                        raise error_from_response(resp)
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


def _copy_body(resp: http.client.HTTPResponse, sink: "Sink", progress: Progress, client: Client) -> int:
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
    if args.key is not None or args.key_file is not None:
        return file_status(args, client_for)
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
    ]
    # The breakdown of used space (nodes before 0.1 answer without it: the lines are left out, not "none").
    for label, field, note in (("  own", "own", " this node's files and uploads"),
                               ("  held", "held", " for other nodes, under live leases"),
                               ("  to free", "awaiting_collection", " held for others, leases ended"),
                               ("  corrupt", "quarantined", " quarantined copies (replaced from other nodes)")):
        if isinstance(storage.get(field), int):
            lines.append((label, size(storage[field]) + note))
    lines += [("free", size(storage.get("free"))), ("limit", size(storage.get("limit"))),
              ("quota", size(storage.get("quota")))]
    leases = answer.get("leases") if isinstance(answer.get("leases"), dict) else {}
    repair = answer.get("repair") if isinstance(answer.get("repair"), dict) else {}
    if all(isinstance(repair.get(k), int) for k in ("queued", "blocks_sent", "bytes_sent")):
        short = repair.get("short_here")
        lines.append(("repair", f"{repair['queued']} key(s) queued, {repair['blocks_sent']} block(s) "
                                f"({human_size(repair['bytes_sent'])}) sent to other nodes since start"
                      + (f"; {short} block(s) of files stored here short of copies" if isinstance(short, int)
                         and short else "")))
    scrub = answer.get("scrub") if isinstance(answer.get("scrub"), dict) else {}
    if all(isinstance(scrub.get(k), (int, float)) for k in ("position", "checked", "corrupt", "recovered")):
        lines.append(("scrub", f"{scrub['position']:.0%} through the pass, {scrub['checked']} block(s) checked since "
                               f"start, {scrub['corrupt']} corrupt ({scrub['recovered']} replaced)"))
    if isinstance(leases.get("granted"), int) and isinstance(leases.get("releases_pending"), int):
        pending = leases["releases_pending"]
        lines.append(("leases", f"{leases['granted']} granted to other nodes here, "
                                f"{pending} release{'' if pending == 1 else 's'} waiting for delivery"))
    for label, value in lines:
        print_out(f"{label + ':':11}{value}")
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
            _audits(p.get("audits")),
            printable(" ".join(str(a) for a in addresses), 300) or "-",
        ))
    if sys.stdout.isatty() and rows:
        rows.insert(0, ("NODE", "STATE", "RTT", "SEEN", "AUDITS", "ADDRESSES"))
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(5)]
    for r in rows:
        print_out("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    return EXIT_OK


def _audits(a: Any) -> str:
    """A peer's audits as this node saw them: passed and failed, "failing" after a recent failure."""
    if not isinstance(a, dict) or not all(isinstance(a.get(k), int) for k in ("audits_ok", "audits_failed")):
        return "-"
    return f"{a['audits_ok']} ok {a['audits_failed']} failed" + (" (failing)" if a.get("failing") is True else "")


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
    blocks, freed = answer.get("blocks_freed"), answer.get("local_bytes_freed", answer.get("bytes_freed"))
    return report_release(f"forgotten: {blocks if isinstance(blocks, int) else '?'} blocks, {size_or_q(freed)} "
                          "freed here", answer)


def report_release(line: str, answer: dict[str, Any]) -> int:
    """The line of ``cas rm`` or ``cas unpin``, with the holders that acknowledged the release; a line on
    stderr for those that did not (their release is queued)."""
    released, pending = answer.get("released_on"), answer.get("pending")
    if isinstance(released, list) and released:
        line += f"; released on {len(released)} holder(s)"
    print_out(line)
    if isinstance(pending, list) and pending:
        print_err(f"{len(pending)} holder(s) did not answer: the release is queued and sent when they are back "
                  "(their copies go when the lease ends at the latest)")
    return EXIT_OK


def file_status(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    """``cas status KEY|ROOT``: the holders of each placement key of the file, and its lowest replica count."""
    key = read_key(args, allow_root=True)
    answer = client_for().json("GET", f"v1/files/{key}/health")
    if not isinstance(answer, dict) or not isinstance(answer.get("keys"), list):
        raise CliError("the node's answer is not in the expected form", EXIT_FAILED)
    if args.json:
        print_json(answer)
        return EXIT_OK
    unreachable = answer.get("unreachable") or []
    for label, value in (
        ("root", printable(str(answer.get("root")))),
        ("blocks", f"{answer.get('blocks')} ({answer.get('local_blocks')} on this node)"),
        ("replicas", f"{answer.get('lowest_replicas')} at the lowest, {answer.get('replicas_wanted')} wanted "
                     "(nodes holding a block under a live lease)"),
        ("asked", f"{answer.get('asked')} node(s)" + (f", {len(unreachable)} did not answer" if unreachable else "")),
    ):
        print_out(f"{label + ':':10}{value}")
    for k in answer["keys"]:
        if not isinstance(k, dict):
            continue
        name = f"stripe {k.get('stripe')}" if k.get("kind") == "stripe" else f"manifest {printable(str(k.get('cid')))}"
        print_out(f"{name}: {k.get('blocks')} block(s), {k.get('replicas')} replica(s) under lease")
        for h in k.get("holders") or []:
            ours = h.get("our_lease_expires")
            lease = f", our lease until {human_time(ours)}" if isinstance(ours, int) else ""
            print_out(f"  {printable(str(h.get('node_id')))}  {h.get('blocks')} of {k.get('blocks')}, "
                      f"{h.get('leased')} under lease{lease}")
    return EXIT_OK


def cmd_pin(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    """``cas pin KEY|ROOT``: keep another node's file alive with this node's leases."""
    key = read_key(args, allow_root=True)
    answer = client_for().json("POST", f"v1/pins/{key}?local={int(args.local)}", ok=(200, 201))
    if args.json:
        print_json(answer)
        return EXIT_OK
    if not isinstance(answer, dict):
        raise CliError("the node's answer is not in the expected form", EXIT_FAILED)
    lowest = answer.get("lowest_holders")
    print_out(f"pinned: {answer.get('blocks')} blocks under {answer.get('keys')} placement key(s), leases on "
              f"{answer.get('holders')} node(s), {lowest} at the lowest per key"
              + ("; a copy is kept on this node" if answer.get("local") else ""))
    if lowest == 0:
        print_err("no node granted a lease on some of the file's blocks: they are not kept by this pin"
                  + ("" if answer.get("local") else " (cas pin --local keeps a copy here and places it again)"))
    return EXIT_OK


def cmd_unpin(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    key = read_key(args, allow_root=True)
    answer = client_for().json("DELETE", f"v1/pins/{key}")
    if args.json:
        print_json(answer)
        return EXIT_OK
    if not isinstance(answer, dict):
        raise CliError("the node's answer is not in the expected form", EXIT_FAILED)
    return report_release(f"unpinned: {size_or_q(answer.get('local_bytes_freed'))} freed here", answer)


def cmd_pins(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    answer = client_for().json("GET", "v1/pins")
    pins = answer.get("pins") if isinstance(answer, dict) else None
    if not isinstance(pins, list):
        raise CliError("the node's pin list is not in the expected form", EXIT_FAILED)
    if args.json:
        print_json(answer)
        return EXIT_OK
    rows = [(printable(str(p.get("root", "?"))), "local" if p.get("local") else "leases",
             human_time(p["created"]) if isinstance(p.get("created"), int) else "?",
             str(p.get("keys", "?")), str(p.get("holders", "?"))) for p in pins if isinstance(p, dict)]
    if sys.stdout.isatty() and rows:
        rows.insert(0, ("ROOT", "COPY", "PINNED", "KEYS", "HOLDERS"))
    for row in rows:
        print_out("  ".join(row))
    return EXIT_OK


def cmd_drain(args: argparse.Namespace, client_for: Callable[[], Client]) -> int:
    """``cas drain``: the node hands every block it holds for others to the next nodes in rank, so that it can
    leave without a repair; waits until it is done."""
    client = client_for()
    state = client.json("POST", "v1/drain", ok=(202,))
    progress = sys.stderr.isatty() and not args.quiet
    while isinstance(state, dict) and not state.get("done"):
        if progress:
            sys.stderr.write(f"\rdraining: {state.get('keys_done')} of {state.get('keys')} placement keys, "
                             f"{state.get('blocks_sent')} blocks sent")
            sys.stderr.flush()
        time.sleep(args.interval)
        answer = client.json("GET", "v1/status")
        repair = answer.get("repair") if isinstance(answer, dict) else None
        state = repair.get("drain") if isinstance(repair, dict) else None
    if progress:
        sys.stderr.write("\n")
    if not isinstance(state, dict):
        raise CliError("the node's answer is not in the expected form", EXIT_FAILED)
    if args.json:
        print_json(state)
    else:
        print_out(f"drained: {state.get('keys_done')} placement keys, {state.get('blocks_sent')} blocks sent")
    short = state.get("short_blocks")
    if short:
        print_err(f"{short} block(s) could not reach their copies on other nodes (too few reachable nodes): "
                  "stopping this node now loses those copies until repair restores them")
        return EXIT_FAILED
    return EXIT_OK
