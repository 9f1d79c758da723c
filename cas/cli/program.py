"""The ``cas`` program: run a command, map every outcome to an exit code and one line on stderr, SIGTERM,
and the console script's quick exit."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, NoReturn

from cas.cli.client import Client, Node, resolve_node
from cas.cli.exits import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    CliError,
    StdoutClosed,
    Terminated,
)
from cas.cli.output import flush_stdout, print_err, printable
from cas.cli.parser import parse_args


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
        print_err(str(e))
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
        print_err(f"internal error: {type(e).__name__}: {printable(str(e))}")
        return EXIT_FAILED


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
