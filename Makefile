# The README's two commands. torch is installed first from its pinned CPU wheel: an unpinned
# torch would pull a multi-GB CUDA build.
PY ?= python
# Optional extras installed with the tests (env suites, the labelling server), so that their
# tests run in CI. The browser tests also get Chromium (.ci/install-browser.sh, apt).
SUITES ?= franka,xmagical,metaworld,crafter,classic,human,morl,gpu,visual,qd

.PHONY: install install-test run test lint

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .

install-test:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test,$(SUITES)]"
	$(PY) -m pip install --no-deps "metaworld>=3.1.1,<3.2"  # it pins mujoco==3.3.0; see pyproject
	# Chromium + Playwright for the `browser` tests (apt; they skip where this cannot install)
	PY=$(PY) bash .ci/install-browser.sh || echo "warning: no Chromium; browser tests will skip"

run: install
	$(PY) -m pbrl

lint:
	$(PY) -m ruff check pbrl tests examples benchmarks
	$(PY) -m ruff format --check pbrl tests examples benchmarks

# The default suite on up to 4 workers (-n auto: one per core; 2 on the 2-core CI machine), grouped
# by module so that module-scoped fixtures (Warp envs, a shared labelling server) load once.
PYTEST_WORKERS ?= auto

test: install-test lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadscope
