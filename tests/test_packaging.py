"""--pack's archive (packaging.pack_env) over a small real venv: what ships, and what stays on the driver."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import pytest

pytest.importorskip("venv_pack", reason="venv-pack (the cluster extra)")

from laion_spark.packaging import pack_env


def test_the_venv_ships_without_the_local_drivers_class_archive(tmp_path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "some_module.py").write_text("VALUE = 1\n")
    archive_dir = venv / "share" / "laion-spark"
    archive_dir.mkdir(parents=True)
    (archive_dir / "spark-classes-0123456789abcdef.jsa").write_bytes(b"\0" * 1024)
    packed = pack_env(tmp_path / "cache", prefix=str(venv))
    with tarfile.open(packed) as tar:
        names = tar.getnames()
    assert any(n.endswith("site-packages/some_module.py") for n in names)
    assert any(n.endswith("bin/python") or n.endswith("bin/python3") for n in names)
    assert not [n for n in names if "share/laion-spark" in n]
