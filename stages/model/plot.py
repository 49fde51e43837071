"""The loss curve of a training run (or another logged curve: ppo's reward) as a PNG, written
with the standard library only (zlib), so every training artifact carries a picture without a
plotting dependency.

Train loss is a blue line, eval loss an orange line with dots, against the step; the axes carry
their min / max values in a 3x5 pixel font, scaled up.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)
TRAIN, EVAL = (31, 119, 180), (255, 127, 14)
SCALE = 2  # font pixel size
GLYPHS = {  # 3x5, rows top to bottom, "1" = ink
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    "-": "000000111000000",
    "e": "000111111100111",
    "t": "010111010010011",
    "r": "000110101100100",
    "a": "000011101101011",
    "i": "010000010010010",
    "n": "000110101101101",
    "v": "000101101101010",
    "l": "010010010010011",
    " ": "000000000000000",
}


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(WHITE) * width) for _ in range(height)]

    def dot(self, x: int, y: int, color: tuple[int, int, int], size: int = 1) -> None:
        for yy in range(y, y + size):
            for xx in range(x, x + size):
                if 0 <= xx < self.width and 0 <= yy < self.height:
                    self.rows[yy][3 * xx : 3 * xx + 3] = bytes(color)

    def line(self, a: tuple[int, int], b: tuple[int, int], color: tuple[int, int, int]) -> None:
        """Bresenham, 2 px thick."""
        (x0, y0), (x1, y1) = a, b
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, color, 2)
            if (x0, y0) == (x1, y1):
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def text(self, x: int, y: int, s: str, color: tuple[int, int, int] = BLACK) -> None:
        for i, ch in enumerate(s):
            glyph = GLYPHS.get(ch, GLYPHS[" "])
            for j, bit in enumerate(glyph):
                if bit == "1":
                    self.dot(x + (i * 4 + j % 3) * SCALE, y + (j // 3) * SCALE, color, SCALE)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + b"".join(
            _chunk(tag, data)
            for tag, data in ((b"IHDR", header), (b"IDAT", zlib.compress(raw, 9)), (b"IEND", b""))
        )


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def label(value: float) -> str:
    """Compact tick text: 1200 -> "1200", 2.5 -> "2.50", 0.000123 -> "1.2e-4"."""
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    if 0.01 <= abs(value) < 1e4:
        return f"{value:.2f}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def series(records: list[dict], key: str) -> list[tuple[float, float]]:
    points = []
    for r in records:
        value, step = r.get(key), r.get("step")
        numbers = isinstance(value, (int, float)) and isinstance(step, (int, float))
        if numbers and math.isfinite(value):
            points.append((float(step), float(value)))
    return sorted(points)


def write_loss_png(records: list[dict], path: Path, width: int = 640, height: int = 400) -> bool:
    """Plot train / eval loss of Trainer log records; False (nothing written) when there is no
    finite loss to plot."""
    return write_curve_png(records, "loss", "eval_loss", path, width, height)


def write_curve_png(
    records: list[dict],
    key: str,
    eval_key: str,
    path: Path,
    width: int = 640,
    height: int = 400,
) -> bool:
    """Plot `key` (blue, "train") and `eval_key` (orange with dots, "eval") of step records
    against the step (ppo: reward_mean and eval_reward_mean); False (nothing written) when there
    is no finite value to plot."""
    train, evals = series(records, key), series(records, eval_key)
    points = train + evals
    if not points:
        return False
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    left, right, top, bottom = 70, width - 20, 40, height - 40
    canvas = Canvas(width, height)

    def at(p: tuple[float, float]) -> tuple[int, int]:
        x = left + (p[0] - x_lo) / (x_hi - x_lo) * (right - left)
        y = bottom - (p[1] - y_lo) / (y_hi - y_lo) * (bottom - top)
        return round(x), round(y)

    canvas.line((left, top), (left, bottom), BLACK)
    canvas.line((left, bottom), (right, bottom), BLACK)
    for frac in (0.25, 0.5, 0.75):  # light grid
        y = round(bottom - frac * (bottom - top))
        canvas.line((left + 3, y), (right, y), GREY)
    canvas.text(4, top - 4, label(y_hi))
    canvas.text(4, bottom - 10, label(y_lo))
    canvas.text(left, bottom + 10, label(x_lo))
    x_text = label(x_hi)
    canvas.text(right - len(x_text) * 4 * SCALE, bottom + 10, x_text)
    for pts, color in ((train, TRAIN), (evals, EVAL)):
        for a, b in zip(pts, pts[1:], strict=False):
            canvas.line(at(a), at(b), color)
        for p in pts if color == EVAL or len(pts) == 1 else ():
            x, y = at(p)
            canvas.dot(x - 2, y - 2, color, 5)
    legend = [("train", TRAIN)] + ([("eval", EVAL)] if evals else [])
    for i, (name, color) in enumerate(legend):
        x = right - 140 + i * 70
        canvas.dot(x, 12, color, 10)
        canvas.text(x + 14, 12, name)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(canvas.png())
    os.replace(tmp, path)
    return True
