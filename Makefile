# Everything runs from a virtualenv in .venv; `make setup` builds it (and the
# apt packages) on a fresh Debian machine. Run as root.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: setup demo test lint unit kernel bench clean

$(VENV_STAMP): pyproject.toml
	./tests/vm/setup-host.sh
	touch $(VENV_STAMP)

setup: $(VENV_STAMP)

demo: $(VENV_STAMP)
	$(PY) tests/vm/run.py python tests/vm/demo.py

test: lint unit kernel

lint: $(VENV_STAMP)
	.venv/bin/ruff check director tests bench
	.venv/bin/ruff format --check director tests bench
	.venv/bin/mypy

unit: $(VENV_STAMP)
	.venv/bin/pytest tests/unit -q -p no:cacheprovider

kernel: $(VENV_STAMP)
	mkdir -p .vmtest
	$(PY) tests/vm/run.py --junit .vmtest/kernel.xml \
		pytest tests/kernel -q -p no:cacheprovider --junitxml=.vmtest/kernel.xml

bench: $(VENV_STAMP)
	$(PY) tests/vm/run.py sh bench/run-all.sh

clean:
	rm -rf .venv .vmtest .pytest_cache .mypy_cache .ruff_cache .hypothesis
