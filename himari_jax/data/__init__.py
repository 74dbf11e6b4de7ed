"""Bars to model inputs: OHLCV loading and checks, Binance archives, synthetic markets, causal
features, labels, context windows and the train/validation pipeline (SPEC 2-4).

The loader's public names are here too: `data.load_ohlcv`, `data.load_dataset`, ...
"""

from himari_jax.data.ohlcv import (  # noqa: F401 - the loader's public names, as before
    COLUMNS,
    PRICE_COLUMNS,
    DataError,
    GapReport,
    builtin_dataset,
    builtin_dataset_names,
    check_frame,
    fill_missing_bars,
    find_gaps,
    infer_freq,
    load_dataset,
    load_datasets,
    load_ohlcv,
)
