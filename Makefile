# The two commands a newcomer runs: `make train` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/digits.py
WORKDIR ?= workdirs/digits
# Extra flags for the trainer / evaluator, e.g. ARGS='--config.train.num_steps=100'
ARGS ?=

.PHONY: train eval test install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) -m perceiver_jax.trainer --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)
	$(PY) -m perceiver_jax.evaluator --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

eval: install
	$(PY) -m perceiver_jax.evaluator --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

# --dist loadscope: a test module stays on one worker, so its module fixtures run once.
test: install
	$(PY) -m pytest -q -n auto --dist loadscope tests

clean:
	rm -rf $(VENV) workdirs *.egg-info
