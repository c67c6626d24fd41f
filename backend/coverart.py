"""Deterministic cover art for demo products: a small PNG writer (zlib, no imaging library) and a
painted composition — sky gradient, stars, a sun or ringed planet, a mountain or city skyline, a
perspective grid and the title in a 5x7 bitmap font.

Everything derives from ``blake2b(product_id)``: the same product always gets the same picture
(byte-identical with the same zlib), different products get different palettes and shapes. Pure
functions, standard library only; a 600x900 cover takes a few tens of milliseconds.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import random
import struct
import unicodedata
import zlib
from collections.abc import Iterable

__all__ = ["COVER_HEIGHT", "COVER_WIDTH", "PNG_SIGNATURE", "encode_png", "png_size",
           "render_cover"]

COVER_WIDTH = 600
COVER_HEIGHT = 900
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Color = bytes  # 3 bytes, RGB


# -- PNG ---------------------------------------------------------------------------------------


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(width: int, height: int, rows: Iterable[bytes | bytearray],
               text: dict[str, str] | None = None) -> bytes:
    """An 8-bit RGB PNG from ``height`` rows of ``3 * width`` bytes (filter 0 on every row).
    ``text`` adds tEXt chunks (Latin-1 keys and values)."""
    raw = bytearray()
    count = 0
    for row in rows:
        if len(row) != 3 * width:
            raise ValueError(f"row {count} has {len(row)} bytes, expected {3 * width}")
        raw += b"\x00"
        raw += row
        count += 1
    if count != height:
        raise ValueError(f"{count} rows, expected {height}")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    for key, value in (text or {}).items():
        out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" +
                          value.encode("latin-1", "replace")))
    out += [_chunk(b"IDAT", zlib.compress(bytes(raw), 9)), _chunk(b"IEND", b"")]
    return b"".join(out)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; ValueError if ``data`` is not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


# -- canvas ------------------------------------------------------------------------------------


class Canvas:
    """Rows of RGB bytes; shapes are painted as horizontal spans (fast in pure Python)."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.rows = [bytearray(3 * width) for _ in range(height)]

    def span(self, y: int, x0: float, x1: float, color: Color) -> None:
        if not 0 <= y < self.height:
            return
        a = max(0, round(x0))
        b = min(self.width, round(x1))
        if b > a:
            self.rows[y][3 * a:3 * b] = color * (b - a)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        for y in range(max(0, int(y0)), min(self.height, int(y1))):
            self.span(y, x0, x1, color)

    def png(self, text: dict[str, str] | None = None) -> bytes:
        return encode_png(self.width, self.height, self.rows, text)


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return bytes((int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)))


def _mix(a: Color, b: Color, t: float) -> Color:
    t = max(0.0, min(1.0, t))
    return bytes(int(x + (y - x) * t + 0.5) for x, y in zip(a, b, strict=True))


# -- font --------------------------------------------------------------------------------------

_GLYPHS = {
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11110 10001 10001 10001 10001 10001 11110",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "!": "00100 00100 00100 00100 00100 00000 00100",
    "?": "01110 10001 00001 00010 00100 00000 00100",
    "'": "00100 00100 01000 00000 00000 00000 00000",
    "&": "01100 10010 10100 01000 10101 10010 01101",
    "/": "00001 00001 00010 00100 01000 10000 10000",
    " ": "00000 00000 00000 00000 00000 00000 00000",
}


def _runs(bits: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = None
    for i, b in enumerate(bits + "0"):
        if b == "1" and start is None:
            start = i
        elif b != "1" and start is not None:
            out.append((start, i))
            start = None
    return out


_FONT = {ch: [_runs(row) for row in rows.split()] for ch, rows in _GLYPHS.items()}


def _printable(title: str) -> str:
    """The title in the font's alphabet: upper case, accents dropped, other characters gone."""
    plain = unicodedata.normalize("NFKD", title.upper())
    kept = "".join(ch if ch in _FONT else (" " if ch.isspace() or ch in "_" else "")
                   for ch in plain)
    return " ".join(kept.split())


def _wrap(text: str, max_chars: int) -> list[str] | None:
    lines: list[str] = []
    for word in text.split():
        if len(word) > max_chars:
            return None
        if lines and len(lines[-1]) + 1 + len(word) <= max_chars:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _layout(text: str, width: int, max_lines: int = 3) -> tuple[int, list[str]]:
    for scale in (12, 11, 10, 9, 8, 7, 6, 5, 4, 3):
        lines = _wrap(text, (width + scale) // (6 * scale))
        if lines is not None and len(lines) <= max_lines:
            return scale, lines
    return 3, _wrap(text[: width // 18], width // 18) or []


def _draw_text(c: Canvas, x0: int, y0: int, text: str, scale: int, color: Color) -> None:
    for i, ch in enumerate(text):
        gx = x0 + i * 6 * scale
        for r, runs in enumerate(_FONT[ch]):
            for a, b in runs:
                c.rect(gx + a * scale, y0 + r * scale, gx + b * scale, y0 + (r + 1) * scale, color)


def _draw_title(c: Canvas, title: str, top: int, color: Color, shadow: Color) -> int:
    """Centred lines from ``top``; returns the y below the last line."""
    text = _printable(title)
    if not text:
        return top
    margin = c.width // 12
    scale, lines = _layout(text, c.width - 2 * margin)
    y = top
    for line in lines:
        w = len(line) * 6 * scale - scale
        x = (c.width - w) // 2
        off = max(1, scale // 2)
        _draw_text(c, x + off, y + off, line, scale, shadow)
        _draw_text(c, x, y, line, scale, color)
        y += 9 * scale
    return y


# -- composition -------------------------------------------------------------------------------


def _circle_half(r: float, dy: float) -> float:
    return math.sqrt(max(0.0, r * r - dy * dy))


def _sky(c: Canvas, horizon: int, top: Color, glow: Color, ground_top: Color,
         ground_bottom: Color) -> None:
    for y in range(c.height):
        if y < horizon:
            t = (y / max(1, horizon - 1)) ** 1.6
            col = _mix(top, glow, t)
        else:
            col = _mix(ground_top, ground_bottom, (y - horizon) / max(1, c.height - horizon))
        c.rows[y][:] = col * c.width


def _stars(c: Canvas, rng: random.Random, bottom: int, color: Color) -> None:
    for _ in range(70):
        x = rng.randrange(c.width)
        y = rng.randrange(max(1, bottom))
        size = 1 + (rng.random() < 0.25) + (rng.random() < 0.08)
        c.rect(x, y, x + size, y + size, _mix(color, b"\x00\x00\x00", rng.random() * 0.5))


def _sun(c: Canvas, cx: float, cy: float, r: float, top: Color, bottom: Color,
         striped: bool, horizon: int) -> None:
    """A disc shaded top to bottom, setting behind the horizon; ``striped`` cuts widening gaps
    into its lower half."""
    for y in range(int(cy - r), min(horizon, int(cy + r) + 1)):
        dy = y - cy
        if dy > 0 and striped:
            period = 18
            gap = 2 + int(7 * dy / r)
            if int(dy) % period < gap:
                continue
        half = _circle_half(r, dy)
        c.span(y, cx - half, cx + half, _mix(top, bottom, (dy + r) / (2 * r)))


def _planet(c: Canvas, rng: random.Random, cx: float, cy: float, r: float, body: Color,
            shade: Color, ring: Color) -> None:
    rx_out, ry_out = r * 1.95, r * 0.42
    rx_in, ry_in = r * 1.45, r * 0.28
    tilt = rng.uniform(-0.25, 0.25)  # ring slope: pixels of y per pixel of x

    def ring_rows(front: bool) -> None:
        for y in range(int(cy - ry_out - abs(tilt) * rx_out) - 1,
                       int(cy + ry_out + abs(tilt) * rx_out) + 2):
            for x0, x1 in _ring_spans(y - cy, rx_out, ry_out, rx_in, ry_in, tilt):
                mid = (x0 + x1) / 2
                # the ring passes in front of the planet below its centre line
                in_front = (y - cy) - tilt * mid >= 0
                if in_front == front:
                    c.span(y, cx + x0, cx + x1, ring)

    ring_rows(front=False)
    lx, ly = cx - r * 0.22, cy - r * 0.22  # lit from the upper left
    for y in range(int(cy - r), int(cy + r) + 1):
        dy = y - cy
        half = _circle_half(r, dy)
        c.span(y, cx - half, cx + half, shade)
        # the lit part: the disc inside a circle moved towards the light (a shadow crescent
        # remains at the lower right)
        lit = _circle_half(r * 0.98, y - ly)
        a, b = max(cx - half, lx - lit), min(cx + half, lx + lit)
        if b > a:
            c.span(y, a, b, _mix(body, shade, (dy + r) / (2 * r) * 0.45))
    ring_rows(front=True)


def _ring_spans(dy: float, rx_o: float, ry_o: float, rx_i: float, ry_i: float,
                tilt: float) -> list[tuple[float, float]]:
    """x intervals (relative to the centre) of a tilted elliptical ring at row offset dy,
    sampled coarsely: the ring is the set of x where the ellipse-space y lies between the inner
    and outer ellipse."""
    out: list[tuple[float, float]] = []
    step = 2.0
    x = -rx_o
    start: float | None = None
    while x <= rx_o + step:
        ey = dy - tilt * x
        inside_outer = (x / rx_o) ** 2 + (ey / ry_o) ** 2 <= 1.0
        inside_inner = (x / rx_i) ** 2 + (ey / ry_i) ** 2 < 1.0
        on = inside_outer and not inside_inner
        if on and start is None:
            start = x
        elif not on and start is not None:
            out.append((start, x))
            start = None
        x += step
    if start is not None:
        out.append((start, rx_o))
    return out


def _mountains(c: Canvas, rng: random.Random, horizon: int, far: Color, near: Color) -> None:
    for layer, color in ((0, far), (1, near)):
        n = rng.randint(3, 5)
        for _ in range(n):
            px = rng.uniform(-0.1, 1.1) * c.width
            height = rng.uniform(0.10, 0.24 if layer == 0 else 0.16) * c.height
            slope = rng.uniform(0.9, 1.8)
            py = horizon - height
            for y in range(int(py), horizon):
                half = (y - py) * slope
                c.span(y, px - half, px + half, color)


def _city(c: Canvas, rng: random.Random, horizon: int, far: Color, near: Color,
          lights: Color) -> None:
    for layer, color in ((0, far), (1, near)):
        x = rng.uniform(-40, 0)
        while x < c.width:
            w = rng.uniform(28, 70)
            h = rng.uniform(0.05, 0.22 if layer == 0 else 0.14) * c.height
            c.rect(x, horizon - h, x + w - 4, horizon, color)
            if layer == 1:
                for wy in range(int(horizon - h + 8), horizon - 6, 14):
                    for wx in range(int(x + 6), int(x + w - 12), 12):
                        if rng.random() < 0.35:
                            c.rect(wx, wy, wx + 5, wy + 6, lights)
            x += w


def _grid(c: Canvas, horizon: int, color: Color, rng: random.Random) -> None:
    depth = c.height - horizon
    vx = c.width / 2 + rng.uniform(-60, 60)
    for k in range(1, 12):  # horizontal lines, closer together towards the horizon
        y = horizon + int(depth * (k / 11) ** 2.2)
        c.rect(0, y, c.width, y + 1 + k // 4, color)
    for i in range(-9, 10):  # lines converging on the vanishing point
        bx = c.width / 2 + i * c.width / 6
        for y in range(horizon, c.height):
            t = (y - horizon) / max(1, depth)
            x = vx + (bx - vx) * t
            half = 0.5 + 1.5 * t
            c.span(y, x - half, x + half, color)


def render_cover(product_id: str, title: str, width: int = COVER_WIDTH,
                 height: int = COVER_HEIGHT) -> bytes:
    """The product's cover as PNG bytes (``width`` x ``height``, portrait by default)."""
    seed = int.from_bytes(hashlib.blake2b(product_id.encode(), digest_size=16).digest(), "big")
    rng = random.Random(seed)
    hue = rng.random()
    glow_hue = hue + rng.uniform(0.45, 0.62)  # a complementary horizon glow
    accent_hue = glow_hue + rng.uniform(-0.08, 0.08)
    c = Canvas(width, height)
    horizon = int(height * rng.uniform(0.60, 0.68))
    _sky(c, horizon, top=_hsv(hue, 0.85, 0.16), glow=_hsv(glow_hue, 0.70, 0.92),
         ground_top=_hsv(hue, 0.80, 0.20), ground_bottom=_hsv(hue, 0.90, 0.06))
    _stars(c, rng, int(horizon * 0.55), b"\xff\xff\xf0")
    r = width * rng.uniform(0.20, 0.30)
    cx = width * rng.uniform(0.32, 0.68)
    if rng.random() < 0.5:
        cy = horizon - r * rng.uniform(0.35, 0.75)
        _sun(c, cx, cy, r, top=_hsv(accent_hue + 0.12, 0.65, 1.0),
             bottom=_hsv(accent_hue - 0.05, 0.85, 0.95), striped=rng.random() < 0.7, horizon=horizon)
    else:
        cy = horizon * rng.uniform(0.48, 0.62)
        _planet(c, rng, cx, cy, r * 0.8, body=_hsv(accent_hue, 0.55, 0.95),
                shade=_hsv(accent_hue + 0.05, 0.75, 0.45), ring=_hsv(glow_hue + 0.1, 0.35, 0.98))
    far, near = _hsv(hue, 0.70, 0.24), _hsv(hue, 0.85, 0.09)
    if rng.random() < 0.5:
        _mountains(c, rng, horizon, far, near)
    else:
        _city(c, rng, horizon, far, near, _hsv(glow_hue + 0.1, 0.5, 1.0))
    _grid(c, horizon, _hsv(glow_hue, 0.75, 0.85), rng)
    c.rect(0, horizon - 1, width, horizon + 1, _hsv(glow_hue, 0.4, 1.0))
    _draw_title(c, title, int(height * 0.07), color=b"\xff\xff\xff",
                shadow=_hsv(hue, 0.9, 0.05))
    border = _hsv(glow_hue, 0.6, 0.9)
    c.rect(0, 0, width, 6, border)
    c.rect(0, height - 6, width, height, border)
    c.rect(0, 0, 6, height, border)
    c.rect(width - 6, 0, width, height, border)
    return c.png({"Title": _printable(title) or product_id, "Software": "launcher-backend"})

