"""Probabilities and prices to trades and answers: the vmapped engine, decision policies,
device-sharded sweeps, what a policy search may claim, evaluation of runs and reports (SPEC 6-8,
11).

The engine's public names are here too: `backtest.run_backtest`, `backtest.sweep`, ...
"""

from himari_jax.backtest.engine import (  # noqa: F401 - the engine's public names, as before
    BacktestParams,
    BacktestResult,
    Prices,
    as_prices,
    buy_and_hold,
    cost_sensitivity,
    make_grid,
    make_params,
    params_from_config,
    run_backtest,
    sweep,
)
