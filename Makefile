# Thin wrappers around the commands in README.md.
.PHONY: install test lint bench bench-torch demo

install:
	pip install -e ".[dev,plot]"

test:
	python -m pytest

lint:
	ruff check himari_jax launch configs tests benchmarks
	lint-imports
	shellcheck launch/*.sh benchmarks/*.sh .ci/run

# The CPU benchmarks of README.md's speed table (the installed package, as `make install` gives).
bench:
	python benchmarks/bench_features.py
	python benchmarks/bench_backtest.py
	python benchmarks/bench_train.py

# Needs the torch extra: pip install -e ".[torch]"
bench-torch:
	python benchmarks/bench_vs_torch.py

demo:
	python launch/quickstart.py --workdir=runs/quickstart
