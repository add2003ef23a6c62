# Everything runs from a virtualenv in .venv; `make setup` builds it (and the
# apt packages) on a fresh Debian machine. Run as root.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: setup demo test lint unit kernel bench clean install

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

# The man pages and the bash and zsh completions (the package itself: pip, see
# docs/operations.md). A wheel has no portable place for them: setuptools'
# data-files install under the interpreter's prefix (a virtualenv's share/,
# which man and bash-completion never look in), so they go here, under
# PREFIX (/usr/local; /usr for a distribution package) and DESTDIR.
PREFIX ?= /usr/local
MANDIR ?= $(PREFIX)/share/man
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPLETIONDIR ?= $(PREFIX)/share/zsh/site-functions
DOCDIR ?= $(PREFIX)/share/doc/director

install:
	install -D -m 0644 docs/man/directord.8 $(DESTDIR)$(MANDIR)/man8/directord.8
	install -D -m 0644 docs/man/directorctl.8 $(DESTDIR)$(MANDIR)/man8/directorctl.8
	install -D -m 0644 docs/man/director.toml.5 $(DESTDIR)$(MANDIR)/man5/director.toml.5
	install -D -m 0644 docs/completion/directorctl.bash $(DESTDIR)$(COMPLETIONDIR)/directorctl
	install -D -m 0644 docs/completion/_directorctl $(DESTDIR)$(ZSHCOMPLETIONDIR)/_directorctl
	install -d $(DESTDIR)$(DOCDIR)
	install -m 0644 README.md docs/*.md docs/dashboard.json docs/alerts.yml $(DESTDIR)$(DOCDIR)/

clean:
	rm -rf .venv .vmtest .pytest_cache .mypy_cache .ruff_cache .hypothesis
