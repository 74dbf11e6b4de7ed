"""Statistics with no knowledge of models or data files: trading metrics, significance (bootstrap,
PSR/DSR, nulls), signal metrics (IC, skill) and prediction diagnostics. The bottom layer."""
