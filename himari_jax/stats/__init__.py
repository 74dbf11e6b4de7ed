"""Statistics with no knowledge of models or data files: trading metrics, significance (bootstrap,
PSR/DSR, nulls), HAC inference on the Sharpe ratio, what a search may claim (selection), signal
metrics (IC, skill) and prediction diagnostics. The bottom layer."""
