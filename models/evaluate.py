"""Evaluate defect-detector weights, or a served model behind the HTTP gateway, on the test split.

Both paths collect raw detections (conf 0.001, up to 300 per image, boxes in original
image pixels) and score them with the same functions in metrics.py, so a served model
can be compared number-for-number with the weights it was built from. The test split
is regenerated deterministically from (seed, count, size) unless --data is given.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import cv2  # noqa: E402
import generate_dataset as gd  # noqa: E402
import yaml  # noqa: E402
from metrics import detection_metrics  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent


def yolo_to_pixels(label_text: str, w: int, h: int) -> list[tuple]:
    """YOLO label lines -> [(cls, x1, y1, x2, y2)] in pixels."""
    boxes = []
    for line in label_text.splitlines():
        if line.strip():
            c, cx, cy, bw, bh = (float(v) for v in line.split())
            boxes.append((int(c), (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
    return boxes


def load_split(data_yaml: Path, split: str = "test") -> tuple[list[dict], list[str]]:
    """Images of one split with pixel ground truth: ([{"path", "width", "height", "gt"}], class names)."""
    cfg = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(cfg["path"])
    names = [cfg["names"][i] for i in sorted(cfg["names"])]
    items = []
    for img_path in sorted((root / cfg[split]).glob("*.jpg")):
        h, w = cv2.imread(str(img_path)).shape[:2]
        label = img_path.parent.parent.parent / "labels" / split / f"{img_path.stem}.txt"
        text = label.read_text() if label.exists() else ""
        items.append({"path": img_path, "width": w, "height": h, "gt": yolo_to_pixels(text, w, h)})
    return items, names


def predict_local(
    weights: Path,
    items: list[dict],
    imgsz: int,
    threads: int = 2,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
) -> list[list[tuple]]:
    """Run Ultralytics inference per image; returns [(cls, conf, x1, y1, x2, y2)] per image."""
    from train import pin_threads
    from ultralytics import YOLO

    model = YOLO(str(weights))
    pin_threads(model, threads)
    preds = []
    for it in items:
        r = model.predict(
            str(it["path"]), imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, device="cpu", verbose=False
        )[0]
        b = r.boxes
        preds.append(
            [
                (int(c), float(s), *map(float, xyxy))
                for c, s, xyxy in zip(b.cls.tolist(), b.conf.tolist(), b.xyxy.tolist(), strict=True)
            ]
        )
    return preds


def encode_multipart(field: str, filename: str, data: bytes, content_type: str = "image/jpeg") -> tuple[bytes, str]:
    """Build a multipart/form-data body with one file field; returns (body, Content-Type header)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def parse_gateway_response(payload: dict, names: list[str]) -> list[tuple]:
    """Gateway /predict JSON -> [(cls, conf, x1, y1, x2, y2)]; class_id wins, else the class name is looked up."""
    if payload.get("status") != "success":
        raise ValueError(f"gateway returned failure: {payload}")
    preds = []
    for d in payload.get("detections", []):
        cls = d["class_id"] if d.get("class_id") is not None else names.index(d["class"])
        preds.append((int(cls), float(d["confidence"]), *map(float, d["bbox"])))
    return preds


def predict_gateway(
    gateway: str,
    items: list[dict],
    names: list[str],
    api_key: str | None = None,
    conf: float = 0.001,
    max_det: int = 300,
    timeout: float = 60.0,
) -> tuple[list[list[tuple]], dict]:
    """POST each image to {gateway}/predict; returns (detections per image, model info reported by the server)."""
    query = urllib.parse.urlencode({"conf": conf, "max_det": max_det})
    url = f"{gateway.rstrip('/')}/predict?{query}"
    preds, model_info = [], {}
    for it in items:
        body, ctype = encode_multipart("file", it["path"].name, it["path"].read_bytes())
        headers = {"Content-Type": ctype, **({"X-API-Key": api_key} if api_key else {})}
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
        model_info = payload.get("model", model_info)
        preds.append(parse_gateway_response(payload, names))
    return preds, model_info


def map_metrics(items: list[dict], preds: list[list[tuple]], names: list[str]) -> dict:
    """Pair ground truth with predictions per image and compute the mAP and precision/recall metrics."""
    return detection_metrics([{"gt": it["gt"], "pred": p} for it, p in zip(items, preds, strict=True)], names)


def ultralytics_val(weights: Path, data_yaml: Path, imgsz: int, split: str = "test", threads: int = 2) -> dict:
    """Ultralytics' own val numbers, to cross-check metrics.py on the same weights and data."""
    from train import pin_threads
    from ultralytics import YOLO

    model = YOLO(str(weights))
    pin_threads(model, threads)
    m = model.val(
        data=str(data_yaml),
        split=split,
        imgsz=imgsz,
        batch=16,
        conf=0.001,
        iou=0.7,
        max_det=300,
        device="cpu",
        plots=False,
        verbose=False,
        workers=0,
        project=str(MODELS_DIR / "runs"),
        name="val",
        exist_ok=True,
    )
    return {
        "precision": float(m.box.mp),
        "recall": float(m.box.mr),
        "mAP50": float(m.box.map50),
        "mAP50-95": float(m.box.map),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=MODELS_DIR / "weights" / "best.pt")
    ap.add_argument("--gateway", help="evaluate the served model at this base URL instead of --weights")
    ap.add_argument("--api-key", default=os.environ.get("API_KEY"), help="X-API-Key for the gateway")
    ap.add_argument("--data", type=Path, help="dataset.yaml (default: regenerate the test split from --seed)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", type=int, default=150, help="test images to regenerate")
    ap.add_argument("--size", type=gd.parse_size, default=gd.DEFAULT_SIZE)
    ap.add_argument("--imgsz", type=int, default=320, help="local inference size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-ultralytics", action="store_true", help="also report Ultralytics val on the same data")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)

    if args.data is None:
        from train import ensure_dataset

        args.data = ensure_dataset(args.seed, {"train": 0, "val": 0, "test": args.test}, args.size)
    items, names = load_split(args.data, args.split)
    result = {"data": str(args.data), "split": args.split}
    if args.gateway:
        preds, info = predict_gateway(args.gateway, items, names, args.api_key)
        result.update(source="gateway", gateway=args.gateway, served_model=info)
    else:
        preds = predict_local(args.weights, items, args.imgsz, args.threads)
        result.update(source="local", weights=str(args.weights), imgsz=args.imgsz)
    result.update(map_metrics(items, preds, names))
    if args.check_ultralytics and not args.gateway:
        result["ultralytics_val"] = ultralytics_val(args.weights, args.data, args.imgsz, args.split, args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
