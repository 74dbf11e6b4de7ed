"""Studies built from the layers below: walk-forward retraining, the model benchmark and its
baselines, placebo markets and the dispatch of their trials (in process or on Ray). Top layer."""
