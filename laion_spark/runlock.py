"""One writer per run directory: a lock file that the pipeline and a takedown both take.

INPUT  -> a run directory URI, who asks (pipeline / takedown) and this process
OUTPUT -> `held(run_dir, who)`: a context manager holding run_dir/_lock.json (host, pid, who, since) while
          the body runs; RunLocked, naming the holder, when another live process holds it

Why: a takedown while the pipeline runs would be undone by the pipeline's next export and erased by its
next manifest write. The lock is created exclusively on local disks (O_EXCL); on object stores, which
have no exclusive create, it is written and read back (two writers racing in the same second can both
win there, which the manifest's merge of takedowns still covers). A lock left by a process that died on
this host (its pid gone, or this very pid without this process having written it: a restarted container)
is taken over with a warning; one from another host is refused until removed (a lease that expires is
what a fleet of ephemeral hosts would need; not built).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid

from laion_spark.config import ConfigError
from laion_spark.io import fsspec_uri

log = logging.getLogger(__name__)

LOCK = "_lock.json"
_HELD: dict[str, str] = {}  # lock path -> the token this process wrote there (re-entry is known here, not guessed)


class RunLocked(ConfigError):
    """Another process holds the run directory (the CLI prints the message, exit code 2)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(fs, path: str) -> dict | None:
    try:
        with fs.open(path, "r") as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError, OSError):
        return None


def _mine(holder: dict | None, me: dict) -> bool:
    return bool(holder) and holder.get("token") == me["token"]


def _stale(holder: dict) -> bool:
    """A lock written on this host by a process that is gone: its pid is dead, or it is this process's
    pid without this process having written it (a restarted container reuses hostname and pid)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    if holder["pid"] == os.getpid():
        return holder.get("token") not in _HELD.values()
    return not _alive(holder["pid"])


def _create(fs, path: str, me: dict) -> bool:
    text = json.dumps(me, indent=2, sort_keys=True) + "\n"
    if type(fs).__name__ == "LocalFileSystem":
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True
    if fs.exists(path):
        return False
    with fs.open(path, "w") as fh:
        fh.write(text)
    return _mine(_read(fs, path), me)


def _refusal(run_dir: str, path: str, holder: dict) -> RunLocked:
    return RunLocked(f"{run_dir} is in use: `laion-spark {holder.get('who', '?')}` (pid {holder.get('pid')} on "
                     f"{holder.get('host')}, since {holder.get('since')}) holds {path}. Wait for it to end; if that "
                     "process is gone, remove the file")


def check(run_dir: str) -> None:
    """RunLocked when another live process holds run_dir (prepare's early check; held() decides)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(fsspec_uri(run_dir))
    path = root.rstrip("/") + "/" + LOCK
    holder = _read(fs, path)
    if not holder or holder.get("token") in _HELD.values() or _stale(holder):
        return  # free, held by this process, or a dead process's lock that held() takes over
    raise _refusal(run_dir, path, holder)


@contextlib.contextmanager
def held(run_dir: str, who: str):
    """Hold run_dir's lock while the body runs (re-entrant within one process)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(fsspec_uri(run_dir))
    fs.makedirs(root, exist_ok=True)
    path = root.rstrip("/") + "/" + LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "who": who, "token": uuid.uuid4().hex,
          "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    holder = _read(fs, path)
    if path in _HELD and holder and holder.get("token") == _HELD[path]:  # a stage the pipeline runs, inside its lock
        yield holder
        return
    if not _create(fs, path, me):
        holder = _read(fs, path) or {}
        if _stale(holder):
            log.warning("%s: taking over the lock of %s (pid %s on this host, no longer running) since %s", run_dir,
                        holder.get("who"), holder.get("pid"), holder.get("since"))
            fs.rm(path)
            if not _create(fs, path, me):
                raise RunLocked(f"{run_dir} is being changed by another process; try again when it ends")
        else:
            raise _refusal(run_dir, path, holder)
    _HELD[path] = me["token"]
    try:
        yield me
    finally:
        _HELD.pop(path, None)
        if _mine(_read(fs, path), me):
            fs.rm(path)
