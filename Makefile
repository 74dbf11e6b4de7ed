# Thin wrappers around the commands in README.md.
.PHONY: install test lint bench demo

install:
	pip install -e ".[dev,plot]"

test:
	python -m pytest

lint:
	ruff check himari_jax launch configs tests benchmarks
	shellcheck launch/*.sh .ci/run

bench:
	python benchmarks/bench_features.py
	python benchmarks/bench_backtest.py
	python benchmarks/bench_train.py
	python benchmarks/bench_vs_torch.py

demo:
	python launch/quickstart.py --workdir=runs/quickstart
