"""Constants every module shares, each defined once (SPEC 4-6).

Actions are encoded 0 = SELL, 1 = HOLD, 2 = BUY in labels, logits, probabilities, ensembles
and backtests alike.
"""

SELL, HOLD, BUY = 0, 1, 2
ACTION_NAMES = ('SELL', 'HOLD', 'BUY')  # ACTION_NAMES[a] is the name of action a
NUM_ACTIONS = len(ACTION_NAMES)

# Hourly bars per year (365 * 24): a year of data; annualises Sharpe, Sortino and returns.
BARS_PER_YEAR = 8760
PERIODS_PER_YEAR = float(BARS_PER_YEAR)

# The original HIMARI hand-tuned logit correction (SELL, HOLD, BUY), added before softmax.
SEED_LOGIT_BIAS = (3.0, -2.5, 1.0)
