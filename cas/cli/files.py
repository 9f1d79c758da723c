"""Local files of the CLI: safe names from the node (Content-Disposition, RFC 6266/5987), content types,
and the download sink (a temp file renamed into place when complete, written behind, fsynced)."""

from __future__ import annotations

import mimetypes
import os
import re
import stat
import sys
import tempfile
import urllib.parse
from typing import Callable

from cas.cli.exits import EXIT_FAILED, EXIT_USAGE, CliError
from cas.cli.output import bad_char, flush_stdout, printable, truncate_utf8, write_stdout

NAME_MAX_BYTES = 255


def fs_name(path: str) -> str:
    """A path for an error message (paths may hold control characters too)."""
    return printable(path, 300)


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
        if bad_char(c):
            raise UnsafeName(f"it contains the control character U+{ord(c):04X}")
    if len(name.encode("utf-8")) > NAME_MAX_BYTES:
        raise UnsafeName(f"it is longer than {NAME_MAX_BYTES} bytes")
    return name


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


def check_content_type(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e]*)?", value):
        raise CliError(f"--type {printable(value)!r} is not a MIME type like text/plain", EXIT_USAGE)
    return value


class Sink:
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
    def open(cls, output: str | None, name: str | None, force: bool, tag: str = "") -> "Sink":
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
        prefix = "." + truncate_utf8(os.path.basename(final), 100) + ".cas-partial-"
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
            return False  # Sink.open reports what is wrong with the directory

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
