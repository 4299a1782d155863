"""Loss-curve PNG drawn with PIL (matplotlib is not a dependency)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from hfssl.logging import get_logger

logger = get_logger(__name__)

Series = Sequence[tuple[float, float]]

_TRAIN_COLOR = (31, 119, 180)
_RAW_COLOR = (174, 199, 232)
_SMOOTH_COLOR = (31, 119, 180)
_EVAL_COLOR = (214, 39, 40)
_GRID = (225, 225, 225)
_AXIS = (60, 60, 60)
_MAX_POINTS = 2000  # enough for an 800 px wide plot; more only slows drawing


def read_metrics(path: str | Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(train, eval) loss series ``[(step, loss)]`` from a ``metrics.jsonl``.

    Lines that are not JSON objects, lack a step or carry non-finite losses are skipped: a run killed
    mid-write leaves a torn last line, and that must not cost the whole card.
    """
    train: list[tuple[float, float]] = []
    evals: list[tuple[float, float]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
                continue
            for key, series in (("loss", train), ("eval_loss", evals)):
                value = rec.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    series.append((float(rec["step"]), float(value)))
    return train, evals


def _thin(points: Series, limit: int = _MAX_POINTS) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return list(points)
    stride = math.ceil(len(points) / limit)
    return list(points[::stride]) + [points[-1]]


def _ema(points: Series, alpha: float) -> list[tuple[float, float]]:
    out, acc = [], None
    for x, y in points:
        acc = y if acc is None else alpha * y + (1 - alpha) * acc
        out.append((x, acc))
    return out


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) >= 1:
        return f"{int(v):,}"
    return f"{v:.3g}"


def render_loss_curve(train: Series, evals: Series, path: str | Path, *, title: str = "Training loss",
                      size: tuple[int, int] = (800, 450)) -> str:
    """Draw train loss (raw + smoothed) and eval loss against steps into a PNG at ``path``."""
    if not train and not evals:
        raise ValueError("no loss values to plot")
    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    points = list(train) + list(evals)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or max(abs(y0) * 0.05, 0.05)
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = top + (y1 - y) / (y1 - y0) * (height - top - bottom)
        return px, py

    # Grid, ticks and labels.
    for ty in _nice_ticks(y0, y1):
        _, py = to_px(x0, ty)
        draw.line([(left, py), (width - right, py)], fill=_GRID)
        label = _fmt(ty)
        draw.text((left - 6 - draw.textlength(label, font=font), py - 5), label, fill=_AXIS, font=font)
    for tx in _nice_ticks(x0, x1):
        px, _ = to_px(tx, y0)
        draw.line([(px, top), (px, height - bottom)], fill=_GRID)
        label = _fmt(tx)
        draw.text((px - draw.textlength(label, font=font) / 2, height - bottom + 6), label, fill=_AXIS, font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline=_AXIS)
    draw.text((width / 2 - draw.textlength("step", font=font) / 2, height - 20), "step", fill=_AXIS, font=font)
    draw.text((8, top - 28), "loss", fill=_AXIS, font=font)
    draw.text((width / 2 - draw.textlength(title, font=font) / 2, 10), title, fill=(0, 0, 0), font=font)

    # Curves: raw train loss is noisy, so a smoothed copy is drawn over it.
    train = _thin(train)
    if len(train) > 1:
        smooth = len(train) >= 20
        draw.line([to_px(x, y) for x, y in train], fill=_RAW_COLOR if smooth else _TRAIN_COLOR,
                  width=1 if smooth else 2)
        if smooth:
            draw.line([to_px(x, y) for x, y in _ema(train, alpha=min(0.3, 20 / len(train)))],
                      fill=_SMOOTH_COLOR, width=2)
    elif train:
        px, py = to_px(*train[0])
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=_TRAIN_COLOR)
    evals = _thin(evals)
    if len(evals) > 1:
        draw.line([to_px(x, y) for x, y in evals], fill=_EVAL_COLOR, width=2)
    for x, y in evals:
        px, py = to_px(x, y)
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=_EVAL_COLOR)

    # Legend.
    legend = [(label, color) for label, color, series in
              (("train loss", _TRAIN_COLOR, train), ("eval loss", _EVAL_COLOR, evals)) if series]
    lx, ly = width - right - 110, top + 8
    for label, color in legend:
        draw.line([(lx, ly + 6), (lx + 20, ly + 6)], fill=color, width=3)
        draw.text((lx + 26, ly), label, fill=_AXIS, font=font)
        ly += 16

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)
    return str(path)
