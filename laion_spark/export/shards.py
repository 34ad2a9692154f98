"""The one temp-and-rename protocol of shard files (webdataset shards, .npy shards; no Spark).

INPUT  -> an fsspec filesystem and one shard's files as (temporary path, final path) pairs, the last
          pair being the shard's completion marker (a webdataset shard's `_stats.json`)
OUTPUT -> the files under their final names, the marker last; or, where the marker is there already,
          the final files left as they are and the temporaries removed

Why this order: a task killed between two renames leaves some final files and no marker. A shard is
complete when, and only when, its marker exists, so the next attempt (a Spark task retry, or a rerun)
redoes a shard without one: it removes the leftovers first, because a rename onto an existing path
fails on HDFS, nests on some fsspec filesystems and is a copy everywhere on object stores. A shard
with its marker is kept (another attempt of the same job finished it: its files are the same rows in
the same order, so the same bytes); a rerun with mode=overwrite removes the folder's shards before
writing, so it replaces them. Two attempts running at once (speculative execution, off by default)
check the marker again before each removal; the job checks the finished folder afterwards.
"""

from __future__ import annotations

import logging
import uuid

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


def new_token() -> str:
    """-> a token unique to one writing attempt (every attempt's temporaries have their own names)."""
    return uuid.uuid4().hex


def temporary_path(final_path: str, token: str) -> str:
    """`dir/name` + token -> `dir/.name.tmp-{token}`: hidden, so a reader listing the folder skips it."""
    folder, name = final_path.rsplit("/", 1)
    return f"{folder}/.{name}{TMP_MARK}{token}"


def is_temporary(name: str) -> bool:
    """A file name -> whether it is a writer's temporary (`.{final name}.tmp-{hex}`)."""
    return name.startswith(".") and TMP_MARK in name


def remove_quietly(fs, paths) -> None:
    """Remove the paths that exist; never raises (after a failure the task's own error matters more,
    and the job removes temporaries that stay)."""
    for path in paths:
        try:
            if fs.exists(path):
                fs.rm(path)
        except Exception:
            log.warning("could not remove %s", path, exc_info=True)


def commit(fs, moves: list[tuple[str, str]]) -> bool:
    """Rename one shard's temporaries into place, the marker (last pair) last -> True; False when the
    marker was there already or appeared meanwhile (another attempt finished the shard), in which
    case our temporaries are removed and the finished shard is left alone."""
    *files, (marker_tmp, marker) = moves
    temporaries = [tmp for tmp, _ in moves]
    if fs.exists(marker):
        remove_quietly(fs, temporaries)
        return False
    for _, final in files:  # a killed attempt's leftovers: removed before any rename onto them
        if fs.exists(marker):
            remove_quietly(fs, temporaries)
            return False
        if fs.exists(final):
            fs.rm(final)
    for tmp, final in files:
        fs.mv(tmp, final)
    try:
        fs.mv(marker_tmp, marker)
    except Exception:
        if fs.exists(marker):  # a rename that does not overwrite lost a race: the shard is finished
            remove_quietly(fs, temporaries)
            return False
        raise
    return True
