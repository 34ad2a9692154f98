"""A fresh venv holding the wheel built from this checkout, installed with the extras the demo names
(laion-spark[all]: it runs every stage), without any test-only package; and the demo run from it, as a
user runs it. conftest.py makes both session fixtures: tests/test_wheel_demo.py checks the install, and
the demo's own tests (test_demo, test_evaluate) read that one demo run.

requirements.txt is passed as constraints so the same pins are used. torch and its GPU closure (CUDA
wheels, triton: 5.4 of the venv's 6.9 GB) are hard-linked in from the test's own venv before pip runs, so
pip finds them installed at the pinned version instead of copying gigabytes (about a minute of CI's 2
cores); every other package the wheel asks for installs from nothing, and test_wheel_demo checks that the
wheel's own metadata asks for torch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# torch's dependency closure that is gigabytes: linked in, not copied (see the module docstring)
LINKED = ("torch", "triton")
LINKED_PREFIXES = ("nvidia-", "nvidia_", "cuda-", "cuda_")


def _linked_distributions() -> list[metadata.Distribution]:
    """-> torch, triton and the CUDA wheels installed in the test's venv."""
    return [d for d in metadata.distributions()
            if d.metadata["Name"].lower() in LINKED or d.metadata["Name"].lower().startswith(LINKED_PREFIXES)]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the same file system: no bytes copied
    except OSError:
        shutil.copy2(src, dst)


def _link_heavy(venv: Path) -> list[str]:
    """A fresh venv -> the names of the distributions whose files it now holds as hard links to the test
    venv's copies (copies where the file systems differ).

    Each distribution's top-level entries (packages, its .dist-info) are hard-linked file by file, never
    symlinked: should pip ever uninstall one, it removes the links, not the test venv's files. Entries
    outside site-packages (scripts) are left out.
    """
    src = Path(sysconfig.get_paths()["purelib"])
    site = venv / src.relative_to(sys.prefix)
    linked, done = [], set()
    for dist in _linked_distributions():
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in sorted(tops - done):  # nvidia/ is shared by a dozen wheels: linked once
            done.add(top)
            if (src / top).is_dir():
                shutil.copytree(src / top, site / top, symlinks=True, dirs_exist_ok=True,
                                copy_function=_link_or_copy)
            elif (src / top).is_file() and not (site / top).exists():
                _link_or_copy(str(src / top), str(site / top))
        linked.append(dist.metadata["Name"])
    return linked


def _run(cmd: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert res.returncode == 0, f"{cmd}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def build(root: Path) -> Path:
    """An empty folder -> the fresh venv (root/venv) with the checkout's wheel[all] installed."""
    # the checkout's files as git sees them (committed or not), so the build writes nothing into it
    source = root / "src"
    files = _run(["git", "ls-files", "-z"], 60, cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(source)], 300)
    wheel = next((root / "dist").glob("laion_spark-*.whl"))
    # requirements.txt's pins as constraints (pip takes no extras there: pyspark[connect] -> pyspark)
    constraints = root / "constraints.txt"
    pins = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    constraints.write_text("\n".join(re.sub(r"\[[^\]]*\]", "", line) for line in pins) + "\n", encoding="utf-8")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], 120)
    linked = _link_heavy(venv)
    assert "torch" in linked, linked
    # --no-compile: no .pyc for the thousands of modules torch & co. ship (a minute of CI's 2 cores); the
    # demo compiles what it imports, as any first run does
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "-c", str(constraints),
          f"{wheel}[all]"], 900)
    return venv


def run_demo(venv: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """The venv + a folder outside the checkout -> (`laion-spark demo output=<that folder>/demo-output` run
    there from the venv, with none of the test run's Python settings; its seconds). The output is named
    whole: the run's manifest names its lists by the paths given, and test_evaluate reads them from here."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")}
    env.update(SPARK_LOCAL_IP="127.0.0.1", PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    started = time.time()
    res = _run([str(venv / "bin" / "laion-spark"), "demo", f"output={cwd / 'demo-output'}", "mode=overwrite"], 900,
               cwd=cwd, env=env)
    return res, time.time() - started
