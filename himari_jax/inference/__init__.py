"""From a trained run to probabilities: trailing-window prediction, calibration, ensembles and
the members (checkpoints or baselines) they combine."""
