"""Semantic segmentation: mIoU / mAcc (macro and micro) from a pixel confusion matrix.

Conventions (identical to ``torchmetrics.classification.MulticlassJaccardIndex`` / ``MulticlassAccuracy``
with the same ``ignore_index``, except for the one difference noted under "macro mAcc"):

* Pixels whose **ground-truth** label equals ``ignore_index`` are dropped before anything is counted. The
  prediction may use any label in ``[0, num_classes)``, including ``ignore_index`` itself (such a pixel is a
  false negative for its true class).
* Per class ``c`` (over the kept pixels): ``TP_c`` = gt c and pred c, ``FP_c`` = pred c but gt not c,
  ``FN_c`` = gt c but pred not c. ``IoU_c = TP/(TP+FP+FN)``, ``Acc_c = TP/(TP+FN)`` (recall).
* **Macro** (``miou``, ``macc``): plain mean over the *present* classes: those with ``TP+FP+FN > 0``, i.e. that
  occur in the kept ground truth **or** in the prediction. Classes absent from both are excluded, and the
  ``ignore_index`` class (when it lies in ``[0, num_classes)``) is always excluded. A class that is predicted
  but never in the ground truth therefore counts with ``IoU_c = 0`` and ``Acc_c = 0``.
  (torchmetrics' macro accuracy excludes the ignore class only when nothing is predicted as it; we always do.)
* **Micro** (pixel-pooled): ``miou_micro = sum_c TP_c / sum_c (TP_c+FP_c+FN_c)`` over all classes except the
  ``ignore_index`` class (so a kept pixel predicted as the ignore class adds one FN, not an extra FP), and
  ``pixel_acc = sum_c TP_c / #kept pixels`` (overall pixel accuracy, torchmetrics' ``average="micro"``).
* Every value is NaN when no pixel is kept.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ._tensor import as_tensor as _as_tensor

ArrayLike = Union[Tensor, np.ndarray]

__all__ = ["ConfusionMatrix", "semantic_segmentation_metrics"]


def _frames(x: Union[ArrayLike, Sequence[ArrayLike]]) -> List[ArrayLike]:
    if isinstance(x, (Tensor, np.ndarray)):
        return [x]
    return list(x)


class ConfusionMatrix:
    """Pixel confusion matrix ``matrix[gt, pred]`` (int64, [C, C]) accumulated over frames.

    Usage::

        cm = ConfusionMatrix(num_classes=21, ignore_index=0)
        for pred, gt in frames:          # label maps, any identical shapes, e.g. [H, W]
            cm.update(pred, gt)
        metrics = cm.compute()           # {"miou", "macc", "miou_micro", "pixel_acc", "num_classes_present"}

    See the module docstring for the exact averaging rules.
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Add one frame.

        Args:
            pred: integer label map, any shape (typically [H, W]); values in ``[0, num_classes)``.
                Take the argmax of logits before calling.
            gt: integer label map of the same shape; values in ``[0, num_classes)`` or ``ignore_index``.
        """
        p = _as_tensor(pred).reshape(-1).to("cpu", torch.int64)
        g = _as_tensor(gt).reshape(-1).to("cpu", torch.int64)
        if p.shape != g.shape:
            raise ValueError(f"pred and gt differ in size: {tuple(pred.shape)} vs {tuple(gt.shape)}")
        c = self.num_classes
        keep = g != self.ignore_index if self.ignore_index is not None else torch.ones_like(g, dtype=torch.bool)
        for name, lab in (("gt", g), ("pred", p)):
            bad = keep & ((lab < 0) | (lab >= c))
            if bool(bad.any()):
                raise ValueError(f"{name} labels must lie in [0, {c}) (got {int(lab[bad][0])})")
        # ignored pixels go to an extra bin that is cut off (cheaper than boolean indexing)
        code = torch.where(keep, g * c + p, torch.full_like(g, c * c))
        self.matrix += torch.bincount(code, minlength=c * c + 1)[: c * c].reshape(c, c)

    def compute(self, per_class: bool = False) -> Dict[str, Any]:
        """Metrics of everything added so far.

        Returns:
            ``miou``, ``macc`` (macro), ``miou_micro``, ``pixel_acc`` (micro) and ``num_classes_present`` as
            floats; with ``per_class=True`` also ``iou_per_class`` and ``acc_per_class``: lists of length C with
            NaN for excluded classes.
        """
        return _metrics_from_confusion(self.matrix, self.ignore_index, per_class)


def _metrics_from_confusion(matrix: Tensor, ignore_index: Optional[int], per_class: bool) -> Dict[str, Any]:
    m = matrix.to(torch.float64)
    c = m.shape[0]
    tp = m.diag()
    fp = m.sum(0) - tp
    fn = m.sum(1) - tp
    union = tp + fp + fn
    counted = torch.ones(c, dtype=torch.bool)
    if ignore_index is not None and 0 <= ignore_index < c:
        counted[ignore_index] = False
    present = counted & (union > 0)
    nan = float("nan")
    iou = torch.where(present, tp / union.clamp_min(1), torch.full_like(tp, nan))
    acc = torch.where(present, tp / (tp + fn).clamp_min(1), torch.full_like(tp, nan))
    total = float(m.sum())
    out: Dict[str, Any] = {
        "miou": float(iou[present].mean()) if present.any() else nan,
        "macc": float(acc[present].mean()) if present.any() else nan,
        "miou_micro": float(tp[counted].sum() / union[counted].sum()) if total > 0 else nan,
        "pixel_acc": float(tp.sum() / total) if total > 0 else nan,
        "num_classes_present": float(present.sum()),
    }
    if per_class:
        out["iou_per_class"] = [float(v) for v in iou]
        out["acc_per_class"] = [float(v) for v in acc]
    return out


def semantic_segmentation_metrics(
    pred: Union[ArrayLike, Sequence[ArrayLike]],
    gt: Union[ArrayLike, Sequence[ArrayLike]],
    num_classes: Optional[int] = None,
    ignore_index: Optional[int] = None,
    per_class: bool = False,
) -> Dict[str, Any]:
    """One-shot mIoU / mAcc over one label map or a list of frames (pooled, as :class:`ConfusionMatrix`).

    Args:
        pred: [H, W] integer label map, or a sequence of them (one per frame).
        gt: same structure; ``ignore_index`` marks pixels to skip (e.g. 0 = void).
        num_classes: C; inferred as ``1 + max label`` over the kept gt and all predictions when None.
        ignore_index: gt label to skip (see module docstring).
        per_class: also return ``iou_per_class`` / ``acc_per_class`` lists.

    Returns:
        dict of floats, see :meth:`ConfusionMatrix.compute`.
    """
    preds, gts = _frames(pred), _frames(gt)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted frames but {len(gts)} ground-truth frames")
    if num_classes is None:
        hi = 0
        for p, g in zip(preds, gts):
            p, g = _as_tensor(p).to(torch.int64), _as_tensor(g).to(torch.int64)
            if ignore_index is not None:
                g = torch.where(g != ignore_index, g, torch.zeros_like(g))
            for lab in (p, g):
                if lab.numel():
                    hi = max(hi, int(lab.max()))
        num_classes = hi + 1
    cm = ConfusionMatrix(num_classes, ignore_index)
    for p, g in zip(preds, gts):
        cm.update(p, g)
    return cm.compute(per_class=per_class)
