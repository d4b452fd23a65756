#!/usr/bin/env python3
"""Draws projects/own-character.png, the sample picture identity: a flat-colour figure (a
courier in a green jacket with a satchel) on white, 1024 x 1024. Standard library only, so the
picture is reproducible anywhere: `python3 scripts/draw-sample-picture.py`. It is the
project's own drawing, under the project's licence (MIT OR Apache-2.0)."""

import struct
import zlib
from pathlib import Path

W = H = 1024
SKIN, HAIR, JACKET = (236, 192, 160), (178, 60, 30), (46, 125, 70)
TROUSERS, SATCHEL, BADGE, SHOE = (60, 64, 90), (140, 90, 45), (212, 175, 55), (40, 30, 25)


def inside_ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def colour(x, y):
    if inside_ellipse(x, y, 512, 250, 92, 112):  # head, hair on top
        return HAIR if y < 215 or (y < 260 and abs(x - 512) > 70) else SKIN
    if 492 <= x <= 532 and 355 <= y <= 385:  # neck
        return SKIN
    if inside_ellipse(x, y, 600, 610, 70, 55):  # satchel on the hip
        return SATCHEL
    if 380 <= x <= 644 and 380 <= y <= 690:  # jacket
        if inside_ellipse(x, y, 450, 450, 16, 16):
            return BADGE
        return JACKET
    if (320 <= x < 380 or 644 < x <= 704) and 390 <= y <= 660:  # sleeves
        return JACKET
    if (320 <= x < 380 or 644 < x <= 704) and 660 < y <= 710:  # hands
        return SKIN
    if (400 <= x <= 500 or 524 <= x <= 624) and 690 < y <= 900:  # legs
        return TROUSERS
    if (390 <= x <= 505 or 519 <= x <= 634) and 900 < y <= 940:  # shoes
        return SHOE
    return (255, 255, 255)


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


rows = b"".join(b"\0" + bytes(c for x in range(W) for c in colour(x, y)) for y in range(H))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
out = Path(__file__).resolve().parent.parent / "projects" / "own-character.png"
out.write_bytes(png)
print(f"wrote {out} ({len(png)} bytes)")
