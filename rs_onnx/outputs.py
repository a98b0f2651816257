"""The files of one run (``--out``, ``<out>.meta.json``, ``<out>.lock``): nothing finished is lost or mixed.

- :func:`check_output` refuses, before anything is written, an output that is an input (model, data,
  config, denoiser, a run's meta file), a folder, or a TSV that already holds rows (``--resume`` or
  ``--overwrite`` say what to do with them).
- :class:`RunLock` holds an exclusive lock on ``<out>.lock`` for the whole run; a second run is refused
  in one line naming the holder.
- :class:`RunFiles` writes the TSV with raw ``os.write`` + ``fsync`` per group of rows; a write error
  (ENOSPC, EFBIG, EIO) cuts the file back to its last complete row and raises :class:`OutputError`.
  ``--overwrite`` writes to a temporary file and replaces the old files only once the new run has its
  first finished row.
- :func:`finished_rows` reads the example indices of an earlier run's complete rows without changing the
  file; :func:`read_rows` does the same for ``--resume`` and cuts a tail cut short by a crash with
  ``truncate`` at the last complete row (never a rewrite).
- :func:`data_identity` is the sha256 of a data file or folder and the selection, recorded in meta.json.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import stat
import sys
import time
import uuid
from pathlib import Path

from . import results
from .errors import OutputError

log = logging.getLogger(__name__)

META_RESERVE = 2048
"""Spaces after the JSON of a running meta file (still valid JSON), so that the final status can be written
over it in place when the disk is full."""


class WriteError(OutputError):
    """A result file could not be written during a run (its complete rows are kept)."""


def lock_path(out: str | Path) -> Path:
    return Path(str(out) + ".lock")


def _sha256_into(h, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def data_identity(
    path: str | Path, start: int = 0, end: int | None = None, skip: int = 1, files: list[str] | None = None
) -> dict:
    """What a run's data is: sha256 of the file, or of a folder's sorted listing and contents (every file
    below it: relative path, size, bytes), or of a manifest and every image it names (``files``, in its
    order: path as named, size, bytes); and the selection start/end/skip. A manifest's own sha256 is kept
    as ``manifest_sha256`` (what older runs recorded as the data's sha256)."""
    p = Path(path)
    h = hashlib.sha256()
    extra: dict = {}
    if p.is_dir():
        kind = "folder"
        found = sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())
        for f in found:
            h.update(f.relative_to(p).as_posix().encode("utf-8", "surrogateescape") + b"\0")
            h.update(str(f.stat().st_size).encode() + b"\0")
            _sha256_into(h, f)
    elif files is not None:
        kind = "manifest"
        own = hashlib.sha256()
        _sha256_into(own, p)
        extra["manifest_sha256"] = own.hexdigest()
        h.update(own.hexdigest().encode() + b"\0")
        for name in files:
            h.update(os.fsencode(name) + b"\0")
            h.update(str(os.stat(name).st_size).encode() + b"\0")
            _sha256_into(h, Path(name))
    else:
        kind = "file"
        _sha256_into(h, p)
    return {
        "sha256": h.hexdigest(),
        "kind": kind,
        "start": int(start),
        "end": None if end is None else int(end),
        "skip": int(skip),
        **extra,
    }


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def _inside(a: Path, folder: Path) -> bool:
    try:
        return folder.is_dir() and Path(os.path.realpath(a)).is_relative_to(os.path.realpath(folder))
    except OSError:
        return False


def check_not_inputs(outputs: dict[str, str | Path], inputs: dict[str, str | Path | None]) -> None:
    """Refuse (OutputError) an output path that is, or lies inside, an input (labels name them in the message),
    or a first output named like a run's meta file."""
    for k, (out_label, out) in enumerate(outputs.items()):
        out = Path(out)
        if k == 0 and out.name.endswith(".meta.json"):
            raise OutputError(
                f"{out_label} {out}: that is a run's meta file; expected a new path for the results "
                "(the meta file is written next to it)"
            )
        for in_label, src in inputs.items():
            if not src:
                continue
            src = Path(src)
            if _same(out, src) or _inside(out, src):
                where = "is" if _same(out, src) else "lies inside"
                raise OutputError(
                    f"{out_label} {out} {where} the {in_label} {src}; expected an output path that is "
                    "not an input (the input was left untouched)"
                )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def check_regular(path: str | Path, flag: str, stdout: str = "--out - writes the rows to stdout") -> None:
    """Refuse (OutputError) an output path that exists and is not a regular file (a device such as
    /dev/null or /dev/full, a FIFO, a socket, a folder) or that is this process's stdout or stderr (/dev/stdout
    into a file). Looked at with ``os.stat`` only, never opened (opening a FIFO blocks until a reader comes)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # a new path
    except OSError as e:
        raise OutputError(f"{flag} {path}: {e.strerror or e}; expected a regular file or a new path") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(
            f"{flag} {path} is a {_kind(st.st_mode)}; expected a regular file or a new path"
            + (f" ({stdout})" if stdout else "")
        )
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        try:
            other = os.fstat(stream.fileno())
        except (AttributeError, OSError, ValueError):
            continue  # a stream without a file (tests capture them)
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            raise OutputError(
                f"{flag} {path} is this process's {name}; expected a file of its own"
                + (f" ({stdout}, and nothing else goes there)" if stdout else "")
            )


def check_run_paths(out: Path) -> None:
    """:func:`check_regular` for ``--out`` and the files written next to it (meta file, lock)."""
    check_regular(out, "--out")
    check_regular(results.meta_path(out), "--out's meta file")
    check_regular(lock_path(out), "--out's lock file")


def count_rows(out: Path) -> int:
    """Complete data rows of a TSV (lines after the header)."""
    try:
        if not stat.S_ISREG(os.stat(out).st_mode):  # never open a FIFO or a device (it may block or never end)
            return 0
        with open(out, "rb") as f:
            return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1)
    except OSError:
        return 0


def check_output(out: Path, inputs: dict, *, resume: bool, overwrite: bool) -> None:
    """Everything about ``out`` that can refuse a run, checked before any file is created."""
    if resume and overwrite:
        raise OutputError("--resume with --overwrite; expected one of them (continue the run, or start over)")
    mp = results.meta_path(out)
    check_not_inputs({"--out": out, "its meta file": mp, "its lock file": lock_path(out)}, inputs)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; expected the path of a TSV file")
    if mp.is_dir():
        raise OutputError(f"{mp} is a folder; expected --out's meta file to be writable there")
    check_run_paths(out)
    if not out.parent.is_dir() and out.parent.exists():
        raise OutputError(f"--out {out}: {out.parent} is not a folder; expected a path in a folder")
    if resume or overwrite:
        return
    if out.exists() and out.stat().st_size > 0:
        status = "unknown"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            status = json.loads(mp.read_text(encoding="utf-8")).get("status", "unknown")
        raise OutputError(
            f"--out {out} already holds {count_rows(out)} rows (status {status}); expected a new path, "
            "--resume to continue that run, or --overwrite to start over"
        )


class RunLock:
    """Exclusive lock on ``<out>.lock`` (fcntl.flock; filelock where there is no fcntl), for one run.

    The lock file names its holder (pid, host, start, command) and is removed on release.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = lock_path(out)
        self._fd: int | None = None
        self._other: object | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows
            return self._acquire_filelock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise OutputError(
                    f"--out {self.out} is in use by another rs-onnx run ({holder}); expected one run "
                    "per --out: wait for it to end, or choose another --out"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its last holder removed while we waited for it
                break
            os.close(fd)
        holder = (
            f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(results.command_line())}"
        )
        os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):  # a full disk: the lock holds, without its holder's name
            results.write_all(fd, " ".join(holder.split())[:1000].encode("utf-8", "replace") + b"\n")
        self._fd = fd
        return self

    def _acquire_filelock(self) -> RunLock:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise OutputError(
                f"--out {self.out} is in use by another rs-onnx run (it holds {self.path}); expected "
                "one run per --out: wait for it to end, or choose another --out"
            ) from None
        self._other = lock
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still held: a waiting run sees the file is gone and retries
            os.close(self._fd)
            self._fd = None
        if self._other is not None:
            self._other.release()  # type: ignore[attr-defined]
            self._other = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _complete_rows(out: Path, data: bytes, columns: tuple[str, ...], mode: str) -> tuple[list[int], int]:
    """(example indices of the complete rows of a TSV's bytes, in file order; bytes up to the last newline).
    The one parser of a run's own rows; OutputError for another header or a row that is not complete."""
    good = data.rfind(b"\n") + 1
    lines = data[:good].decode("utf-8", "replace").split("\n")[:-1]
    if not lines:
        return [], good
    if lines[0] != "\t".join(columns):
        raise OutputError(f"--resume: {out} starts with {lines[0][:60]!r}; expected the header of a {mode} TSV")
    done = []
    for k, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        try:
            if len(cells) != len(columns):
                raise ValueError
            done.append(int(cells[0]))
        except ValueError:
            raise OutputError(
                f"--resume: {out} line {k} is not a complete {mode} row ({line[:60]!r}); expected "
                f"{len(columns)} tab-separated cells"
            ) from None
    return done, good


def finished_rows(out: Path, columns: tuple[str, ...], mode: str) -> list[int]:
    """Example indices of the complete rows of an earlier run's TSV, in file order (a last line without its
    newline is not one). Read only: the file is never changed, so it may be called before the run's lock
    (the progress line's count of examples already done). OSError, or OutputError as :func:`read_rows`."""
    with open(out, "rb") as f:
        return _complete_rows(out, f.read(), columns, mode)[0]


def read_rows(out: Path, columns: tuple[str, ...], mode: str) -> list[int]:
    """:func:`finished_rows` for ``--resume`` under the run's lock; cuts a last line left without its newline
    by a crash (``truncate`` at the last complete row; the file is never rewritten)."""
    with open(out, "rb") as f:
        data = f.read()
    done, good = _complete_rows(out, data, columns, mode)
    if good == 0 and data:
        log.info("--resume: %s holds no complete line; starting it again", out)
        os.truncate(out, 0)
    elif good < len(data):
        log.info(
            "--resume: %s ends with a row cut short by a crash (%d bytes); it is recomputed", out, len(data) - good
        )
        os.truncate(out, good)
    return done


def write_meta(path: Path, meta: dict, reserve: bool = False) -> str | None:
    """meta.json via a unique temporary file and rename; on a full disk, written over the old file in place
    (its reserved spaces make room). ``reserve`` pads the JSON with :data:`META_RESERVE` spaces. Returns None,
    or why neither worked."""
    try:
        results.write_json_atomic(path, meta, pad=META_RESERVE if reserve else 0)
        return None
    except OSError as first:
        data = (json.dumps(meta, indent=2, default=str) + "\n").encode("utf-8")
        try:
            size = path.stat().st_size
            if len(data) > size:
                return _describe(first)
            fd = os.open(path, os.O_WRONLY)
            try:
                results.write_all(fd, data + b" " * (size - len(data)))
                os.fsync(fd)
            finally:
                os.close(fd)
            log.debug("meta file %s written in place after %s", path, first)
            return None
        except OSError:
            return _describe(first)


def _describe(err: OSError) -> str:
    name = errno.errorcode.get(err.errno or 0, "")
    return f"{err.strerror or err}{f' ({name})' if name else ''}"


class RunFiles:
    """The TSV and meta file of one run, written so that no finished row is ever lost or mixed.

    Call :meth:`begin` with the running meta, :meth:`write` per group of rows, :meth:`finish` with the final
    meta. ``replace`` (``--overwrite``): rows go to a temporary file that replaces ``out`` at the first group.
    """

    def __init__(self, out: Path, columns: tuple[str, ...], *, append: bool, replace: bool) -> None:
        self.out = Path(out)
        self.meta_path = results.meta_path(out)
        self.columns = columns
        self.append = append
        self.replace = replace and self.out.exists()
        self.rows = 0
        self.rows_in_file = 0  # complete rows of the TSV, earlier runs' included
        self._fd: int | None = None
        self._good = 0
        self._part: Path | None = None
        self._meta: dict | None = None
        self._began = False  # a meta file of this run exists
        self.meta_written = True
        self._digest = hashlib.sha256()  # of the TSV's bytes so far (header and complete rows)

    def digest(self) -> dict:
        """meta.json's ``rows_digest``: the sha256 of the TSV's first ``bytes`` bytes (its header and the
        ``rows`` complete rows written so far; ``rs-onnx verify`` checks it, so an edited, truncated or
        appended file is caught). Kept across --resume: an appended run hashes the earlier rows first."""
        return {"bytes": self._good, "rows": self.rows_in_file, "sha256": self._digest.hexdigest()}

    def begin(self, meta: dict) -> None:
        """Writes the running meta (unless replacing: then at the first row) and opens the TSV."""
        self._meta = meta
        header = ("\t".join(self.columns) + "\n").encode("utf-8")
        if self.replace:
            self._part = self.out.with_name(f".{self.out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
            self._fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._write_bytes(header)
            return
        earlier = b""
        if self.append and self.out.exists():  # --resume: the rows kept (read_rows cut any torn tail)
            with open(self.out, "rb") as f:
                earlier = f.read()
            self._digest.update(earlier)
            self._good = len(earlier)
            self.rows_in_file = max(0, earlier.count(b"\n") - 1)
            if earlier:
                meta["rows_digest"] = self.digest()
        why = write_meta(self.meta_path, meta, reserve=True)
        if why:
            raise OutputError(f"cannot write {self.meta_path}: {why}; expected a writable folder with free space")
        self._began = True
        if self.append and self.out.exists():
            self._fd = os.open(self.out, os.O_WRONLY | os.O_APPEND)
            if os.fstat(self._fd).st_size != len(earlier):
                raise OutputError(f"--resume: {self.out} changed while the run started; expected one run per --out")
            if self._good == 0:
                self._write_bytes(header)
            return
        self._fd = os.open(self.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._write_bytes(header)
        results.fsync_dir(self.out)

    def _write_bytes(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None, "begin() opens the file"
        try:
            results.write_all(fd, data)
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._good)  # no part of an unfinished row stays
            target = self._part or self.out
            raise WriteError(f"cannot write {target}: {_describe(err)}") from err
        self._good += len(data)
        self._digest.update(data)

    def _still_there(self) -> None:
        """WriteError when the file being written is no longer at its path (removed, or its folder removed or
        replaced during the run): rows written to it now would be lost unseen."""
        target = self._part or self.out
        assert self._fd is not None, "begin() opens the file"
        try:
            here, ours = os.stat(target), os.fstat(self._fd)
            same = (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)
        except OSError:  # gone (ENOENT), or a file where its folder was (ENOTDIR)
            same = False
        if not same:
            gone = not target.parent.exists()
            raise WriteError(
                f"{target} was {'removed with its folder' if gone else 'removed or replaced'} during the run; "
                "expected --out to stay in place until the run ends (the rows written to it are gone with it)"
            )

    def write(self, rows: list[dict]) -> None:
        """Appends complete rows (one write, one fsync); OutputError if they could not all be written, or
        when the file was removed under the run."""
        self._still_there()
        data = "".join("\t".join(results.format_value(r[c]) for c in self.columns) + "\n" for r in rows)
        self._write_bytes(data.encode("utf-8"))
        self.rows += len(rows)
        self.rows_in_file += len(rows)
        if self._part is not None:
            self._install()

    def _install(self) -> None:
        """--overwrite: the new run has finished rows; its files replace the old ones (meta removed first,
        so that the new rows never sit next to the old meta)."""
        old = count_rows(self.out)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.meta_path)
        os.replace(str(self._part), self.out)
        self._part = None
        self._began = True
        results.fsync_dir(self.out)
        log.warning("--overwrite: %s replaced (its %d rows from an earlier run are gone)", self.out, old)
        why = write_meta(self.meta_path, self._meta or {}, reserve=True)
        if why:
            raise WriteError(f"cannot write {self.meta_path}: {why}")

    def _catch_up(self) -> None:
        """Rows a signal left written but not yet counted (it landed between their write and its fsync's
        return): the complete lines after the digested bytes join the digest; a torn tail does not."""
        try:
            with open(self.out, "rb") as f:
                f.seek(self._good)
                extra = f.read()
        except OSError:
            return
        extra = extra[: extra.rfind(b"\n") + 1]
        if extra:
            self._digest.update(extra)
            self._good += len(extra)
            self.rows_in_file += extra.count(b"\n")

    def finish(self, meta: dict | None) -> None:
        """Closes the TSV and writes the final meta (not when an --overwrite run ended before its first row:
        the old files then stay as they were)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._part is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._part)
            self._part = None
            log.warning("--overwrite: the run ended before its first row; %s was kept as it was", self.out)
            self.meta_written = False
            return
        if meta is not None and self._began:
            if "examples_done" in meta and self.out.exists():  # what the file holds (a signal may land between
                meta["examples_done"] = count_rows(self.out)  # a row's write and the caller's count)
            self._catch_up()
            meta["rows_digest"] = self.digest()
            why = write_meta(self.meta_path, meta)
            self.meta_written = why is None
            if why:
                log.warning("could not record the run's end in %s: %s", self.meta_path, why)
