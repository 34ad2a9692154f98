"""The takedown journal: what a takedown removes is written into run_dir before anything is rewritten.

INPUT  -> a run directory, a list (BlockList: name, kind, file) and the sample_ids it matched
OUTPUT -> run_dir/takedowns/<NNNN>-<name>/ holding
            takedown-<NNNN>-<name>.txt      the list's keys, one a line, digests only (a URL list is kept
                                            as the SHA-256 of each URL as written and normalised, kind
                                            url_sha256): the run keeps no copy of the listed URLs, and the
                                            keys outlive the user's file
            takedown-<NNNN>-<name>-ids.txt  the run's rows the list matched, one id a line
            entry.json    written after both: list, kind, its content hash, reason, status (started ->
                          complete), and when complete the files rewritten and the counts
          `recorded_lists(run_dir)`: every recorded takedown as export blocklists (its keys and its ids),
          (named after those files: the reasons say blocklisted:takedown-<NNNN>-<name>), which the
          pipeline adds to export so a later export cannot release the rows again, whatever becomes of
          the list file; `removed_ids(run_dir)`: every id any takedown recorded

An entry without entry.json is a takedown killed before it recorded its ids: nothing was rewritten yet
(ids are recorded first), so it is removed and redone. A started entry resumes with its recorded ids;
a complete one makes a rerun of the same list a no-op.
"""

from __future__ import annotations

import json
import re

from laion_spark.io import fsspec_uri

FOLDER = "takedowns"
ENTRY = "entry.json"
REASON_PREFIX = "takedown:"
# the list kind -> the kind its recorded keys have (URLs as their SHA-256: no plaintext URL kept)
RECORDED_KIND = {"url": "url_sha256"}


def _fs(uri: str):
    import fsspec

    return fsspec.core.url_to_fs(fsspec_uri(uri))


def folder(run_dir: str) -> str:
    return run_dir.rstrip("/") + "/" + FOLDER


def _stem(entry: dict) -> str:
    return f"{entry['dir']}/takedown-{entry['dir'].rsplit('/', 1)[-1]}"


def keys_uri(entry: dict) -> str:
    return _stem(entry) + ".txt"


def ids_uri(entry: dict) -> str:
    return _stem(entry) + "-ids.txt"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "list"


def entries(run_dir: str) -> list[dict]:
    """-> every recorded takedown's entry.json (with "dir": its folder URI), in order; folders without an
    entry.json (a takedown killed before its ids were recorded) are left out."""
    fs, path = _fs(folder(run_dir))
    if not fs.exists(path):
        return []
    out = []
    for child in sorted(fs.ls(path, detail=False)):
        name = child.rstrip("/").rsplit("/", 1)[-1]
        if not re.match(r"^\d{4,}-", name) or not fs.exists(f"{child}/{ENTRY}"):
            continue
        with fs.open(f"{child}/{ENTRY}", "r") as fh:
            entry = json.load(fh)
        entry["dir"] = f"{folder(run_dir)}/{name}"
        out.append(entry)
    return out


def find(run_dir: str, kind: str, list_sha256: str | None) -> dict | None:
    """-> the recorded takedown of this list's content and kind (the latest), None if there is none."""
    same = [e for e in entries(run_dir) if e["kind"] == kind and e["list_sha256"] == list_sha256]
    return same[-1] if same else None


def _write_json(fs, path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with fs.open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    fs.mv(tmp, path)


def clear_unrecorded(run_dir: str) -> list[str]:
    """Remove the folders of takedowns killed before their entry was written -> their URIs."""
    fs, path = _fs(folder(run_dir))
    if not fs.exists(path):
        return []
    gone = []
    for child in sorted(fs.ls(path, detail=False)):
        if not fs.exists(f"{child}/{ENTRY}"):
            fs.rm(child, recursive=True)
            gone.append(child)
    return gone


def start(spark, run_dir: str, listed, list_sha256: str, ids: list[int], at: str) -> dict:
    """Record a takedown before anything is rewritten: its keys (Spark, as digests), its ids, then its
    entry (status started) -> the entry."""
    from pyspark.sql import functions as F

    from laion_spark.export import blocked as B

    fs, path = _fs(folder(run_dir))
    seqs = [int(e["dir"].rsplit("/", 1)[-1].split("-", 1)[0]) for e in entries(run_dir)]
    seq = max(seqs, default=0) + 1
    name = f"{seq:04d}-{_slug(listed.name)}"
    here = {"dir": f"{folder(run_dir)}/{name}"}
    keys = B.read_keys(spark, listed)
    kind = RECORDED_KIND.get(listed.kind, listed.kind)
    if kind == "url_sha256":
        keys = keys.select(F.sha2(F.col(B.KEY), 256).alias(B.KEY)).distinct()
    # one file, not Spark's folder: export hashes a list file by its content (a moved run stays complete)
    parts = f"{here['dir']}/.keys-parts"
    keys.coalesce(1).write.mode("overwrite").text(parts)
    keys_fs, keys_path = _fs(keys_uri(here))
    part_fs, part_dir = _fs(parts)
    written = sorted(part_fs.glob(part_dir.rstrip("/") + "/part-*"))
    if written:
        part_fs.mv(written[0], keys_path)
    else:
        with keys_fs.open(keys_path, "w") as fh:
            fh.write("")
    part_fs.rm(part_dir, recursive=True)
    ids_fs, ids_path = _fs(ids_uri(here))
    with ids_fs.open(ids_path, "w") as fh:
        fh.write("".join(f"{i}\n" for i in ids))
    entry = {"seq": seq, "name": listed.name, "list": listed.uri, "kind": listed.kind, "keys_kind": kind,
             "list_sha256": list_sha256, "reason": REASON_PREFIX + listed.name, "at": at, "status": "started",
             "sample_ids": len(ids)}
    _write_json(fs, f"{path}/{name}/{ENTRY}", entry)
    entry["dir"] = here["dir"]
    return entry


def ids_of(entry: dict) -> list[int]:
    fs, path = _fs(ids_uri(entry))
    with fs.open(path, "r") as fh:
        return [int(line) for line in fh if line.strip()]


def complete(entry: dict, record: dict) -> dict:
    """Mark a takedown done, with what it rewrote and counted -> the entry written."""
    fs, path = _fs(entry["dir"] + "/" + ENTRY)
    done = {k: v for k, v in entry.items() if k != "dir"}
    done.update(record, status="complete")
    _write_json(fs, path, done)
    return {**done, "dir": entry["dir"]}


def removed_ids(run_dir: str) -> list[int]:
    """-> every sample id any takedown of this run recorded (sorted, once each)."""
    out: set[int] = set()
    for entry in entries(run_dir):
        out.update(ids_of(entry))
    return sorted(out)


def recorded(run_dir: str) -> list[tuple[str, str]]:
    """-> every recorded takedown as (export blocklist kind, URI): its keys (as digests) and its ids."""
    out = []
    for entry in entries(run_dir):
        out += [(entry["keys_kind"], keys_uri(entry)), ("sample_id", ids_uri(entry))]
    return out


def recorded_lists(run_dir: str) -> list:
    """-> recorded(run_dir) as BlockLists, named after their files: takedown-<NNNN>-<name>[-ids] (two
    requests named alike stay two lists)."""
    from laion_spark.export.blocked import named

    return named(recorded(run_dir))
