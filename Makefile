# Two commands set everything up on a fresh machine: `make install`, then `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED := ../shared
MODEL := models/stories260K.gguf
MODEL_SHA256 := 270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d
MODEL_URL := https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf

.PHONY: install model browser test bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ray]'
	$(MAKE) model

# stories260K: copied from ../shared when it is there, downloaded otherwise; checked either way
model: $(MODEL)
$(MODEL):
	@mkdir -p models
	@if [ -f $(SHARED)/models/stories260K.gguf ]; then cp $(SHARED)/models/stories260K.gguf $@.tmp; \
	 else echo "downloading $(MODEL_URL)"; curl -fL --retry 3 -o $@.tmp $(MODEL_URL); fi
	@echo "$(MODEL_SHA256)  $@.tmp" | sha256sum -c --quiet - || { rm -f $@.tmp; echo "sha256 mismatch for $@"; exit 1; }
	@mv $@.tmp $@
	@echo "$@ ready"

# Chromium for tests/browser (Debian's package: needs root and apt). Playwright, its driver, comes with
# the test extra of `make install`; it is installed here too for a venv made before it was there.
browser:
	@command -v chromium >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet 'playwright>=1.40'
	@chromium --version 2>/dev/null | grep -v '^/usr/bin/chromium:' || true

test:
	$(PY) -m pytest -q

bench:
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
