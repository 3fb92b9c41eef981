# The two commands a newcomer runs: `make train` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/digits.py
WORKDIR ?= workdirs/digits
# Extra flags for train.py / eval.py, e.g. ARGS='--config.train.num_steps=100'
ARGS ?=

.PHONY: train eval test install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) train.py --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)
	$(PY) eval.py --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

eval: install
	$(PY) eval.py --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

test: install
	$(PY) -m pytest -q -n auto tests

clean:
	rm -rf $(VENV) workdirs *.egg-info
