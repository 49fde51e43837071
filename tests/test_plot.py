"""The loss-curve PNG: a valid file (decoded here by hand), curves where the data puts them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from stages.model.plot import EVAL, TRAIN, label, write_loss_png


def decode(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, RGB rows) of an 8-bit RGB PNG; checks every chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(tag + body)
        header = body if tag == b"IHDR" else header
        idat += body if tag == b"IDAT" else b""
        pos += 12 + n
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    rows = [raw[i * stride : (i + 1) * stride] for i in range(height)]
    assert all(r[0] == 0 for r in rows)  # filter byte
    return width, height, [r[1:] for r in rows]


def pixels(rows: list[bytes], color: tuple[int, int, int]) -> list[tuple[int, int]]:
    want = bytes(color)
    return [
        (x, y)
        for y, r in enumerate(rows)
        for x in range(len(r) // 3)
        if r[3 * x : 3 * x + 3] == want
    ]


def test_a_falling_loss_is_drawn_high_on_the_left(tmp_path: Path) -> None:
    records = [{"step": s, "loss": 3.0 - s / 50} for s in range(100, 0, -1)]  # unsorted
    path = tmp_path / "loss.png"
    assert write_loss_png(records, path, width=300, height=200)
    width, height, rows = decode(path)
    assert (width, height) == (300, 200)
    train = [p for p in pixels(rows, TRAIN) if p[1] > 30]  # below the legend
    left = [y for x, y in train if x < 100]
    right = [y for x, y in train if x > 200]
    assert left and right and sum(left) / len(left) < sum(right) / len(right)
    assert not pixels(rows, EVAL)  # no eval records, no eval colour
    assert not path.with_suffix(".png.tmp").exists()


def test_eval_points_get_their_own_colour(tmp_path: Path) -> None:
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7}]
    path = tmp_path / "loss.png"
    assert write_loss_png(records, path)
    _, _, rows = decode(path)
    assert pixels(rows, TRAIN) and pixels(rows, EVAL)


def test_nothing_to_plot_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    records = [{"step": 1, "learning_rate": 0.1}, {"step": 2, "loss": float("nan")}]
    assert not write_loss_png(records, path)
    assert not path.exists()


def test_a_single_point_and_a_flat_loss_still_plot(tmp_path: Path) -> None:
    for records in ([{"step": 5, "loss": 1.0}], [{"step": s, "loss": 1.0} for s in range(5)]):
        path = tmp_path / "loss.png"
        assert write_loss_png(records, path)
        assert pixels(decode(path)[2], TRAIN)


def test_tick_labels_are_compact() -> None:
    assert [label(v) for v in (1200.0, 2.5, 0.000123, -3.0)] == ["1200", "2.50", "1.2e-4", "-3"]
