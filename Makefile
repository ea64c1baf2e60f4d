# cxrfuse: two entry points for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock system-deps demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/python -m pip install -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install cxrfuse with its dependencies (versions of requirements.lock)

lock: $(STAMP)  ## rewrite requirements.lock from the installed packages (after an upgrade on purpose)
	{ sed -n '/^#/p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^cxrfuse'; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

system-deps:  ## Debian packages the tests use: a JRE for METEOR, Chromium for the web page test, Orthanc + DICOMweb for the PACS round trip, dcmtk + dicom3tools to check DICOM objects (installed when missing and root)
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; \
	  else echo "note: no java on PATH: METEOR is reported as missing (install default-jre-headless)"; fi; }
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "note: no chromium on PATH: the browser test of cxrfuse serve is skipped (install chromium)"; fi; }
	@{ command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb; \
	  else echo "note: no Orthanc with its DICOMweb plugin: the PACS round-trip tests are skipped (install orthanc orthanc-dicomweb)"; fi; }
	@command -v dsrdump >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dcmtk dicom3tools; \
	  else echo "note: no dcmtk/dicom3tools: the dsrdump/dciodvfy checks of the DICOM objects are skipped (install dcmtk dicom3tools)"; fi; }

demo: $(STAMP)  ## run the embedded default pipeline end to end
	$(BIN)/cxrfuse demo --out demo-output

test: $(STAMP) system-deps  ## run the test suite
	$(BIN)/python -m pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) demo-output .pytest_cache
