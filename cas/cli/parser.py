"""Argument parsing: the ``cas`` parser, its subcommands and options, with one-line usage errors."""

from __future__ import annotations

import argparse
from typing import NoReturn

from cas.cli.client import DEFAULT_TIMEOUT
from cas.cli.commands import (
    cmd_drain,
    cmd_get,
    cmd_ls,
    cmd_peers,
    cmd_pin,
    cmd_pins,
    cmd_put,
    cmd_rm,
    cmd_status,
    cmd_unpin,
)
from cas.cli.exits import EXIT_USAGE, CliError


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

    p = sub.add_parser("status", parents=[common], help="show the node's status, or a file's replicas",
                       description="Without KEY: the node's status. With KEY (or ROOT, the file's root id; - for "
                                   "stdin, or --key-file): which nodes hold each block of the file under a live "
                                   "lease, and the lowest replica count over its blocks.")
    p.add_argument("key", metavar="KEY|ROOT", nargs="?", default=None,
                   help="a file's key or root id (- : the first line of stdin)")
    p.add_argument("--key-file", metavar="FILE", default=None,
                   help="read the key from the first line of FILE (- for stdin)")
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

    p = sub.add_parser("pin", parents=[common], help="keep another node's file alive with this node's leases",
                       description="Take this node's leases on every block of a file another node stored (KEY, or "
                                   "ROOT: its root id is enough), so that its holders keep it after the uploader "
                                   "forgot it or is gone; renewed like this node's own files.")
    key_options(p)
    p.add_argument("--local", action="store_true",
                   help="also keep a copy of every block here (and place blocks again when holders are lost)")
    p.add_argument("--json", action="store_true", help="print the node's JSON answer")
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("unpin", parents=[common], help="release a pin's leases (and its local copy)")
    key_options(p)
    p.add_argument("--json", action="store_true", help="print the node's JSON answer")
    p.set_defaults(func=cmd_unpin)

    p = sub.add_parser("drain", parents=[common], help="hand every held block to other nodes before stopping",
                       description="The node sends every block it holds for other nodes to the next nodes in its "
                                   "key's rank that lack it, until N other nodes have it, and this command waits "
                                   "until it is done (progress on a terminal). Then stop the node. Exit 1 when "
                                   "some blocks could not be handed over.")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("pins", parents=[common], help="list the files this node pins",
                       description="One line per pin: root id, copy (local, or leases only), when pinned, placement "
                                   "keys, holders under this node's leases.")
    p.add_argument("--json", action="store_true", help="print the node's JSON answer")
    p.set_defaults(func=cmd_pins)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name, default in (("node", None), ("token_file", None), ("timeout", DEFAULT_TIMEOUT), ("quiet", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    return args
