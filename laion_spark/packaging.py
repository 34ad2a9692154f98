"""What spark-submit.sh ships to a cluster: the laion_spark package as a zip, and (--pack) the venv.

INPUT  -> the laion_spark package directory; a virtual environment prefix (sys.prefix by default)
OUTPUT -> `laion_spark.zip` for `--py-files`; a venv-pack archive for `--archives ...#environment`,
          cached under a key of requirements.txt + the installed distributions + the Python version,
          so a second submit with the same environment reuses it instead of packing ~1 GB again

Run as `python -m laion_spark.packaging zip DEST_DIR` or `... pack CACHE_DIR [--requirements FILE]`;
each prints the path of what it built on stdout (that is how spark-submit.sh reads it).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import logging
import os
import platform
import sys
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
ENV_ARCHIVE_PREFIX = "laion-spark-env-"
# files a `pip install -e .` leaves in site-packages; they point at a checkout the nodes do not have
_EDITABLE_PATTERNS = ("__editable__.*", "__editable___*", "*.egg-link")


def build_pyfiles_zip(dest_dir: str | os.PathLike, package_dir: str | os.PathLike = PACKAGE_DIR) -> Path:
    """laion_spark package dir -> <dest_dir>/laion_spark.zip (sources and package data, no caches).

    The zip holds `laion_spark/...` at its root, which is what `--py-files` needs to put the package on
    the driver's and the executors' sys.path. Entries carry a fixed date so equal sources give an
    equal zip.
    """
    package_dir = Path(package_dir)
    out = Path(dest_dir) / f"{package_dir.name}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package_dir.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
                continue
            arcname = path.relative_to(package_dir.parent).as_posix()
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    os.replace(tmp, out)
    return out


def _installed_distributions(prefix: str) -> list[str]:
    """-> sorted 'name==version' of the distributions installed in the venv at prefix."""
    site = glob.glob(os.path.join(prefix, "lib", "python*", "site-packages"))
    dists = metadata.distributions(path=site) if site else metadata.distributions()
    return sorted({f"{d.metadata['Name']}=={d.version}".lower() for d in dists if d.metadata["Name"]})


def env_cache_key(prefix: str, requirements: str | os.PathLike | None = None) -> str:
    """venv prefix (+ requirements file) -> a short hash that changes when the environment does."""
    digest = hashlib.sha256()
    digest.update(f"{platform.python_version()} {sys.platform} {platform.machine()}\n".encode())
    if requirements and Path(requirements).is_file():
        digest.update(Path(requirements).read_bytes())
    digest.update("\n".join(_installed_distributions(prefix)).encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _allow_editable_installs():
    """venv-pack refuses a venv with a `pip install -e` package; let it pack, and say so.

    The editable package itself (laion_spark) reaches the cluster in the --py-files zip; its
    site-packages stubs are excluded from the archive by `pack_env`.
    """
    from venv_pack import core

    original = core.check_no_editable_packages

    def check(context):
        try:
            original(context)
        except core.VenvPackException as exc:
            log.warning("packing without the editable installs (they travel in --py-files): %s", exc)

    core.check_no_editable_packages = check
    try:
        yield
    finally:
        core.check_no_editable_packages = original


def pack_env(
    cache_dir: str | os.PathLike,
    prefix: str | None = None,
    requirements: str | os.PathLike | None = None,
    compress_level: int = 4,
) -> Path:
    """venv at prefix (default: this interpreter's) -> a cached venv-pack .tar.gz in cache_dir.

    Packs only when no archive for this environment's key exists; older archives in cache_dir are
    removed after a new one is written (one environment, one archive).
    """
    import venv_pack

    prefix = os.path.abspath(prefix or sys.prefix)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{ENV_ARCHIVE_PREFIX}{env_cache_key(prefix, requirements)}.tar.gz"
    if out.is_file():
        log.info("venv-pack: reusing %s", out)
        return out
    started = time.time()
    with _allow_editable_installs():
        env = venv_pack.Env(prefix)
    site = os.path.relpath(glob.glob(os.path.join(prefix, "lib", "python*", "site-packages"))[0], prefix)
    for pattern in _EDITABLE_PATTERNS:
        env = env.exclude(os.path.join(site, pattern))
    # the local drivers' class archive (laion_spark/jvm_archive.py, ~180 MB): executors never map it, and it
    # names this machine's java and jars, which an executor's would not match
    env = env.exclude("share/laion-spark/*")
    fd, tmp = tempfile.mkstemp(prefix=".packing-", suffix=".tar.gz", dir=cache)
    os.close(fd)
    try:
        env.pack(output=tmp, format="tar.gz", force=True, compress_level=compress_level)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    for old in cache.glob(f"{ENV_ARCHIVE_PREFIX}*.tar.gz"):
        if old != out:
            old.unlink()
    log.info("venv-pack: packed %s in %.1fs (%.0f MB)", out, time.time() - started, out.stat().st_size / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    """`zip DEST_DIR` | `pack CACHE_DIR [--requirements FILE] [--prefix VENV]` -> prints the path built."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="python -m laion_spark.packaging")
    sub = parser.add_subparsers(dest="command", required=True)
    zip_cmd = sub.add_parser("zip", help="build laion_spark.zip for --py-files")
    zip_cmd.add_argument("dest_dir")
    pack_cmd = sub.add_parser("pack", help="venv-pack this environment (cached)")
    pack_cmd.add_argument("cache_dir")
    pack_cmd.add_argument("--requirements", default=None)
    pack_cmd.add_argument("--prefix", default=None)
    args = parser.parse_args(argv)
    if args.command == "zip":
        path = build_pyfiles_zip(args.dest_dir)
    else:
        path = pack_env(args.cache_dir, prefix=args.prefix, requirements=args.requirements)
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
