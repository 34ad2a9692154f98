"""Start and stop real Spark servers on 127.0.0.1 for tests: a standalone master + worker, a Spark
Connect server, and runs of ./spark-submit.sh.

INPUT  -> a tmp dir for logs, pid files and work dirs
OUTPUT -> context managers that yield the server's URL and always stop what they started (the
          process group is killed when a polite stop does not end it), plus env/run helpers
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPARK_SUBMIT_SH = REPO / "spark-submit.sh"
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def pyspark_home() -> Path:
    """-> the pyspark package dir (a SPARK_HOME: bin/spark-submit, bin/spark-class, sbin/, jars/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_env(tmp: Path, **extra: str) -> dict[str, str]:
    """-> an environment for Spark processes: 127.0.0.1 only, this interpreter for Python workers,
    an empty SPARK_CONF_DIR (no spark-defaults.conf of the machine), JAVA_HOME when needed."""
    from laion_spark.session import java_home

    conf_dir = tmp / "spark-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_CONNECT"))}
    for key in ("MASTER", "PYSPARK_SUBMIT_ARGS", "SPARK_REMOTE", "SPARK_SUBMIT_ARGS", "SPARK_HOME"):
        env.pop(key, None)
    env.update(
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_CONF_DIR=str(conf_dir),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    home = java_home()
    if home:
        env["JAVA_HOME"] = home
    env.update(extra)
    return env


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, SIGKILL what is left after `timeout` seconds.

    `proc` (the group leader, when it is our child) is reaped while waiting: a zombie still counts
    as a member of its group.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def _start(cmd: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    """Start cmd in a new session (its own process group), output to log."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def _wait_for(predicate, what: str, timeout: float, procs=(), logs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process exited with {proc.returncode}\n"
                                   + "\n".join(_tail(p) for p in logs))
        time.sleep(0.3)
    raise TimeoutError(f"{what}: not ready after {timeout}s\n" + "\n".join(_tail(p) for p in logs))


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Cluster:
    """A standalone master and its workers on 127.0.0.1, each in its own process group."""

    def __init__(self, tmp: Path, cores: int, memory: str, timeout: float):
        self.tmp, self.cores, self.memory, self.timeout = tmp, cores, memory, timeout
        self.env = spark_env(tmp, SPARK_HOME=str(pyspark_home()), SPARK_WORKER_DIR=str(tmp / "work"))
        self.spark_class = str(pyspark_home() / "bin" / "spark-class")
        self.master_log = tmp / "master.log"
        self.master: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.url = ""

    def start_master(self) -> None:
        port, ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{port}"
        self.master = _start([self.spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                              "--port", str(port), "--webui-port", str(ui_port)], self.master_log, self.env, self.tmp)
        _wait_for(lambda: "I have been elected leader" in _tail(self.master_log, 100_000),
                  "standalone master", self.timeout, [self.master], [self.master_log])

    def add_worker(self) -> subprocess.Popen:
        """Start one more worker and wait until the master has registered it -> its process."""
        k = len(self.workers)
        # the first worker's work dir is tmp/work (where tests look for an executor's files), then work1, ...
        log, work = self.tmp / f"worker{k}.log", self.tmp / ("work" if k == 0 else f"work{k}")
        work.mkdir(parents=True, exist_ok=True)
        registered = _tail(self.master_log, 1_000_000).count("Registering worker 127.0.0.1")
        proc = _start([self.spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                       "--cores", str(self.cores), "--memory", self.memory, "--webui-port", str(free_port()),
                       "--work-dir", str(work), self.url], log, self.env, self.tmp)
        self.workers.append(proc)
        _wait_for(lambda: _tail(self.master_log, 1_000_000).count("Registering worker 127.0.0.1") > registered
                  and "Successfully registered with master" in _tail(log, 100_000),
                  "standalone worker registration", self.timeout, [self.master, proc], [self.master_log, log])
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """SIGKILL a worker's whole process group: the worker, its executors and their Python workers die
        at once, as when a machine is lost (nothing is told to shut down cleanly)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kill_group(proc.pid, timeout=5)  # a child that somehow survived

    def stop(self) -> None:
        for proc in [*reversed(self.workers), self.master]:  # workers (and executors) first, then the master
            if proc is not None:
                kill_group(proc.pid, proc=proc)
                proc.wait(timeout=10)


@contextlib.contextmanager
def cluster(tmp: Path, workers: int = 1, cores: int = 1, memory: str = "1g", timeout: float = 120) -> Iterator[Cluster]:
    """Start a standalone master and `workers` workers on 127.0.0.1 -> yield the Cluster (its url, its
    workers, add_worker, kill_worker); everything it started is stopped after.

    Each runs `spark-class` in its own process group; a worker's executors (and their Python workers) are
    its children, so killing the groups leaves nothing behind.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    c = Cluster(tmp, cores, memory, timeout)
    try:
        c.start_master()
        for _ in range(workers):
            c.add_worker()
        yield c
    finally:
        c.stop()


@contextlib.contextmanager
def standalone_cluster(tmp: Path, cores: int = 1, memory: str = "1g", timeout: float = 120) -> Iterator[str]:
    """A master and one worker on 127.0.0.1 -> yield 'spark://127.0.0.1:PORT' (see cluster())."""
    with cluster(tmp, 1, cores, memory, timeout) as c:
        yield c.url


def _connect_scripts(home: Path) -> tuple[list[str], list[str]]:
    """-> (start, stop) commands for the Connect server.

    Apache Spark's distribution has sbin/start-connect-server.sh and stop-connect-server.sh; the
    pyspark wheel ships only sbin/spark-daemon.sh. The two scripts are one-line wrappers around it
    (`spark-daemon.sh submit|stop SparkConnectServer 1`), so that is what runs when they are missing.
    """
    sbin = home / "sbin"
    if (sbin / "start-connect-server.sh").is_file() and (sbin / "stop-connect-server.sh").is_file():
        return [str(sbin / "start-connect-server.sh")], [str(sbin / "stop-connect-server.sh")]
    daemon = str(sbin / "spark-daemon.sh")
    return ([daemon, "submit", CONNECT_SERVER_CLASS, "1", "--name", "Spark Connect server"],
            [daemon, "stop", CONNECT_SERVER_CLASS, "1"])


@contextlib.contextmanager
def connect_server(tmp: Path, master: str = "local[2]", timeout: float = 120,
                   extra_env: dict | None = None) -> Iterator[str]:
    """Start a Spark Connect server on 127.0.0.1 -> yield 'sc://127.0.0.1:PORT'; stop it after."""
    tmp.mkdir(parents=True, exist_ok=True)
    home = pyspark_home()
    pid_dir, log_dir = tmp / "pid", tmp / "logs"
    pid_dir.mkdir(exist_ok=True)
    log_dir.mkdir(exist_ok=True)
    env = spark_env(tmp, SPARK_HOME=str(home), SPARK_PID_DIR=str(pid_dir), SPARK_LOG_DIR=str(log_dir),
                    SPARK_IDENT_STRING="laion-spark-test", **(extra_env or {}))
    port = free_port()
    start, stop = _connect_scripts(home)
    launcher_log = tmp / "launcher.log"
    cmd = [*start, "--master", master,
           "--conf", f"spark.connect.grpc.binding.port={port}",
           "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
           "--conf", "spark.driver.bindAddress=127.0.0.1", "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.session.timeZone=UTC",
           "--conf", "spark.sql.shuffle.partitions=4"]
    # spark-daemon.sh nohups the server into the background; it keeps this new session's group id
    launcher = _start(cmd, launcher_log, env, tmp)
    try:
        launcher.wait(timeout=60)
        if launcher.returncode != 0:
            raise RuntimeError(f"start-connect-server failed ({launcher.returncode}): {_tail(launcher_log)}")
        logs = [launcher_log, *sorted(log_dir.glob("*.out"))]
        _wait_for(lambda: _port_open(port), "Spark Connect server", timeout, (), logs)
        yield f"sc://127.0.0.1:{port}"
    finally:
        subprocess.run(stop, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60, check=False)
        kill_group(launcher.pid, proc=launcher)  # what stop did not end (a hung JVM, a failed start)


def start_submit(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """./spark-submit.sh args in the background, in its own process group, stdout and stderr to `log`;
    the caller kills its group (kill_group) when done."""
    with open(log, "wb") as out:
        return subprocess.Popen([str(SPARK_SUBMIT_SH), *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def run_submit(args: list[str], env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """./spark-submit.sh args -> the finished process (stdout, stderr captured), in its own group
    so a timeout kills spark-submit's JVM and Python driver too."""
    proc = subprocess.Popen([str(SPARK_SUBMIT_SH), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid, proc=proc)
        out, err = proc.communicate()
        raise AssertionError(f"spark-submit.sh timed out after {timeout}s\n{out[-3000:]}\n{err[-6000:]}") from None
    finally:
        if proc.poll() is None:
            kill_group(proc.pid, proc=proc)
    kill_group(proc.pid, timeout=2)  # nothing of the run may outlive it
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --- the small inputs the submit and Connect tests run the stages on, with hand-written expectations

PAGES = [
    (
        "http://example.com/a.html",
        b"<html><head><title>a</title></head><body>\n"
        b'<img src="/img/cat.jpg" alt="A small orange cat sleeping on a wooden chair in the kitchen">\n'
        b'<p><img src="https://cdn.example.org/dog.png"'
        b' alt="A brown dog running across the green grass of the city park"></p>\n'
        b'<img src="/img/short.jpg" alt="tiny">\n'
        b'<img src="data:image/png;base64,AAAA" alt="an inline image that is never a candidate">\n'
        b"</body></html>\n",
        "2023-01-02T03:04:05Z",
    ),
    (
        "http://example.net/dir/b.html",
        b'<html><head><base href="http://static.example.net/"></head><body>\n'
        b'<img src="pics/bird.jpg" alt="  A blue bird   sitting on the branch of an old tree &amp; the morning sky ">\n'
        b"</body></html>\n",
        "2023-05-06T07:08:09Z",
    ),
]

# (url, text, page_url, crawl_time) per candidate, in page order; each page's record offset is
# read back from the file by warcio, independently of the extractor
EXPECTED_CANDIDATES = [
    ("http://example.com/img/cat.jpg", "A small orange cat sleeping on a wooden chair in the kitchen",
     "http://example.com/a.html", "2023-01-02 03:04:05"),
    ("https://cdn.example.org/dog.png", "A brown dog running across the green grass of the city park",
     "http://example.com/a.html", "2023-01-02 03:04:05"),
    ("http://static.example.net/pics/bird.jpg", "A blue bird sitting on the branch of an old tree & the morning sky",
     "http://example.net/dir/b.html", "2023-05-06 07:08:09"),
]


def write_small_warc(path: Path) -> dict[str, tuple[int, int]]:
    """Write PAGES (+ one image response) as a gzipped WARC -> {page_url: (offset, length)}."""
    from io import BytesIO

    from warcio.archiveiterator import ArchiveIterator
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        records = [(url, body, date, "text/html; charset=utf-8") for url, body, date in PAGES]
        records.insert(1, ("http://example.com/img/cat.jpg", b"\xff\xd8\xff\xe0 not really a jpeg",
                           "2023-01-02T03:04:06Z", "image/jpeg"))
        for url, body, date, ctype in records:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))],
                                       protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(
                url, "response", payload=BytesIO(body), http_headers=headers,
                warc_headers_dict={"WARC-Date": date}))
    offsets = {}
    with open(path, "rb") as fh:
        it = ArchiveIterator(fh)
        for record in it:
            url = record.rec_headers.get_header("WARC-Target-URI")
            record.content_stream().read()
            offsets[url] = (it.get_record_offset(), it.get_record_length())
    return offsets


def expected_candidate_rows(source_uri: str, offsets: dict[str, tuple[int, int]]) -> list[tuple]:
    """-> (url, text, page_url, language, license, crawl_time, source_uri, source_offset, source_length)."""
    return [
        (url, text, page, "en", None, crawl_time, source_uri, *offsets[page])
        for url, text, page, crawl_time in EXPECTED_CANDIDATES
    ]


# candidates for dedupe: (url, text, source_uri, source_offset); rows 0 and 2 are one (url, text)
DEDUPE_INPUT = [
    ("http://a.example/1.jpg", "first alt text", "s3://bucket/b.warc.gz", 10),
    ("http://a.example/2.jpg", "second alt text", "s3://bucket/a.warc.gz", 20),
    ("http://a.example/1.jpg", "first alt text", "s3://bucket/a.warc.gz", 30),
    ("http://a.example/1.jpg", "other alt text", "s3://bucket/a.warc.gz", 40),
]
# the pairs: the duplicate with the smallest (source_uri, source_offset) survives
EXPECTED_PAIRS = [DEDUPE_INPUT[1], DEDUPE_INPUT[2], DEDUPE_INPUT[3]]


def dedupe_input_rows() -> list[tuple]:
    """DEDUPE_INPUT -> full CANDIDATES tuples."""
    from datetime import datetime

    when = datetime(2024, 1, 1, tzinfo=UTC)
    return [(url, text, "http://page.example/", "en", 0.99, None, when, uri, off, 100)
            for url, text, uri, off in DEDUPE_INPUT]
