"""What a model predicts against what happened: one summary for training and diagnose.py.

`confusion_summary` turns a confusion matrix into shares, per-class precision / recall,
accuracy and a collapse flag; training's validation metrics (`validation.validation_metrics`)
and `diagnostics` (launch/diagnose.py) are both built on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from himari_jax import constants

# Share of bars one predicted action may take before the model counts as collapsed.
COLLAPSE_THRESHOLD = 0.85


def confusion_summary(confusion: np.ndarray,
                      collapse_threshold: float = COLLAPSE_THRESHOLD) -> dict[str, Any]:
  """Shares, precision, recall and collapse of a confusion matrix.

  Args:
    confusion: (3, 3) counts, rows = labels, columns = predicted actions.
    collapse_threshold: a predicted share above it flags `collapsed`.

  Returns:
    JSON-able dict: bars, accuracy, balanced_accuracy (mean recall over the classes
    present), confusion, predicted_share, label_share, precision and recall per action name
    (None where undefined), collapsed and, when collapsed, collapsed_to.
  """
  confusion = np.asarray(confusion, np.float64)
  predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
  bars = float(confusion.sum())
  n = max(bars, 1.0)
  names = constants.ACTION_NAMES
  recall = np.divide(np.diag(confusion), actual, out=np.full(constants.NUM_ACTIONS, np.nan),
                     where=actual > 0)
  top = int(predicted.argmax())
  out = {
      'bars': int(bars),
      'accuracy': float(np.trace(confusion) / n),
      'balanced_accuracy': float(np.nanmean(recall)) if (actual > 0).any() else float('nan'),
      'confusion': confusion.astype(np.int64).tolist(),
      'predicted_share': {a: float(predicted[i] / n) for i, a in enumerate(names)},
      'label_share': {a: float(actual[i] / n) for i, a in enumerate(names)},
      'precision': {a: (float(confusion[i, i] / predicted[i]) if predicted[i] else None)
                    for i, a in enumerate(names)},
      'recall': {a: (float(recall[i]) if actual[i] else None) for i, a in enumerate(names)},
      'collapsed': bool(predicted[top] / n > collapse_threshold),
  }
  if out['collapsed']:
    out['collapsed_to'] = names[top]
  return out


def diagnostics(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray, *,
                collapse_threshold: float = COLLAPSE_THRESHOLD) -> dict[str, Any]:
  """`confusion_summary` of a model's argmax on the bars in `mask`, plus its mean logits.

  Args:
    logits: (N, 3) raw (or corrected) logits; NaN rows (unavailable bars) are skipped.
    labels: (N,) int; mask: (N,) bool.

  Returns:
    `confusion_summary`'s dict plus mean logits per true class (what the seed used to pick
    its bias by hand) and overall.
  """
  mask = np.asarray(mask, bool) & ~np.isnan(logits).any(axis=1)
  logits, labels = np.asarray(logits)[mask], np.asarray(labels)[mask]
  confusion = np.zeros((constants.NUM_ACTIONS, constants.NUM_ACTIONS), np.int64)
  np.add.at(confusion, (labels, logits.argmax(axis=1)), 1)
  out = confusion_summary(confusion, collapse_threshold)
  out['mean_logits_by_label'] = {
      a: (logits[labels == i].mean(axis=0).round(4).tolist() if (labels == i).any() else None)
      for i, a in enumerate(constants.ACTION_NAMES)}
  out['mean_logits'] = logits.mean(axis=0).round(4).tolist() if len(logits) else None
  return out
