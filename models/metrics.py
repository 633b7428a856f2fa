"""Detection metrics (precision, recall, mAP50, mAP50-95) as plain numpy functions.

Mirrors Ultralytics' definitions (ultralytics/utils/metrics.py ap_per_class and
BaseValidator.match_predictions) so numbers computed from a served model's HTTP
detections are comparable with ``yolo val``:

* per image, detections in descending confidence greedily claim the unclaimed
  same-class ground truth with the highest IoU, separately at each IoU threshold
  0.50:0.05:0.95;
* AP is the COCO 101-point interpolated AP: the mean, over recall 0, 0.01, ..., 1,
  of the best precision reached at that recall or higher. Ultralytics integrates the
  same 101 samples with the trapezoid rule and a zero sentinel, which caps a perfect
  detector at 0.995; the COCO mean gives 1.0 and otherwise differs by < 0.01;
* precision and recall are read at the confidence that maximises the smoothed mean
  F1 over classes; only classes that have ground truth are averaged.

An image is a dict ``{"gt": [(cls, x1, y1, x2, y2), ...], "pred": [(cls, conf, x1, y1, x2, y2), ...]}``
with boxes in pixels of the original image.
"""

from __future__ import annotations

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_AP_X = np.linspace(0, 1, 101)
_EPS = 1e-16


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (M, 4) x (N, 4) -> (M, N)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-7)


def match_image(gt: list, pred: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mark each detection of one image correct/incorrect at every IoU threshold.

    Returns (correct (N, 10) bool, conf (N,), pred_cls (N,)) with detections sorted
    by descending confidence.
    """
    gt_arr = np.asarray(gt, float).reshape(-1, 5)
    pr = np.asarray(pred, float).reshape(-1, 6)
    pr = pr[np.argsort(-pr[:, 1], kind="stable")]
    correct = np.zeros((len(pr), len(IOU_THRESHOLDS)), bool)
    if len(pr) and len(gt_arr):
        iou = box_iou(gt_arr[:, 1:], pr[:, 2:]) * (gt_arr[:, :1] == pr[None, :, 0])
        claimed = np.zeros((len(gt_arr), len(IOU_THRESHOLDS)), bool)
        for j in range(len(pr)):
            available = np.where(claimed, 0.0, iou[:, j, None])
            k = available.argmax(0)
            correct[j] = available[k, np.arange(len(IOU_THRESHOLDS))] >= IOU_THRESHOLDS
            claimed[k, np.arange(len(IOU_THRESHOLDS))] |= correct[j]
    return correct, pr[:, 1], pr[:, 0].astype(int)


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point interpolated AP of one confidence-ranked precision/recall curve."""
    if not len(recall):
        return 0.0
    envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
    idx = np.searchsorted(recall, _AP_X, side="left")
    return float(np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0).mean())


def smooth(y: np.ndarray, f: float = 0.1) -> np.ndarray:
    """Box-filter smoothing used to pick a stable max-F1 confidence."""
    nf = round(len(y) * f * 2) // 2 + 1
    p = np.ones(nf // 2)
    return np.convolve(np.concatenate((p * y[0], y, p * y[-1])), np.ones(nf) / nf, mode="valid")


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray) -> dict:
    """AP at each IoU threshold plus max-mean-F1 precision/recall for every class that has ground truth."""
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, counts = np.unique(target_cls.astype(int), return_counts=True)
    x = np.linspace(0, 1, 1000)
    ap = np.zeros((len(classes), tp.shape[1]))
    p_curve, r_curve = np.zeros((len(classes), 1000)), np.zeros((len(classes), 1000))
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        if not sel.any():
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (1 - tp[sel]).cumsum(0)
        recall = tpc / (counts[ci] + _EPS)
        precision = tpc / (tpc + fpc)
        r_curve[ci] = np.interp(-x, -conf[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-x, -conf[sel], precision[:, 0], left=1)
        ap[ci] = [compute_ap(recall[:, j], precision[:, j]) for j in range(tp.shape[1])]
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + _EPS)
    best = int(smooth(f1.mean(0)).argmax()) if len(classes) else 0
    return {"classes": classes, "counts": counts, "ap": ap, "p": p_curve[:, best], "r": r_curve[:, best]}


def detection_metrics(images: list[dict], names: list[str] | tuple[str, ...]) -> dict:
    """Overall and per-class P, R, mAP50, mAP50-95 over a list of per-image gt/pred dicts."""
    tps, confs = [np.zeros((0, len(IOU_THRESHOLDS)), bool)], [np.zeros(0)]
    pcls, tcls = [np.zeros(0, int)], [np.zeros(0)]
    for im in images:
        correct, conf, cls = match_image(im["gt"], im["pred"])
        tps.append(correct)
        confs.append(conf)
        pcls.append(cls)
        tcls.append(np.asarray(im["gt"], float).reshape(-1, 5)[:, 0])
    res = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls))
    per_class = {}
    for ci, c in enumerate(res["classes"]):
        per_class[names[c]] = {
            "instances": int(res["counts"][ci]),
            "precision": float(res["p"][ci]),
            "recall": float(res["r"][ci]),
            "mAP50": float(res["ap"][ci, 0]),
            "mAP50-95": float(res["ap"][ci].mean()),
        }
    has = len(res["classes"]) > 0
    overall = {
        "precision": float(res["p"].mean()) if has else 0.0,
        "recall": float(res["r"].mean()) if has else 0.0,
        "mAP50": float(res["ap"][:, 0].mean()) if has else 0.0,
        "mAP50-95": float(res["ap"].mean()) if has else 0.0,
    }
    instances = int(sum(v["instances"] for v in per_class.values()))
    return {"images": len(images), "instances": instances, "overall": overall, "per_class": per_class}
