"""Deterministic mutations of real PNG and DICOM uploads (the faults a damaged or hostile
upload has): PNG chunks with a bad CRC, length or truncated data, IHDR sizes from zero to
10^10 pixels; DICOM elements with several values (``Rows`` of ``512\\512``), an unknown VR, an
odd length, missing pixel data, junk rescale and window values; JPEG frame sizes; random byte
changes and cuts."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterator

Mutation = tuple[str, bytes]

LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"UC", b"UR", b"OV"}
ROWS, COLUMNS, PIXEL_DATA = (0x28, 0x10), (0x28, 0x11), (0x7FE0, 0x10)


def png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, data length, type) of each chunk of a PNG."""
    pos, out = 8, []
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((pos, n, data[pos + 4 : pos + 8]))
        pos += 12 + n
    return out


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_mutations(data: bytes, rng: random.Random, n_random: int = 10) -> Iterator[Mutation]:
    chunks = png_chunks(data)
    for i, (pos, n, kind) in enumerate(chunks):
        name = f"{kind.decode('latin-1')}#{i}"
        bad_crc = bytearray(data)
        bad_crc[pos + 8 + n] ^= 0xFF
        yield f"{name} bad CRC", bytes(bad_crc)
        yield f"{name} cut in the middle", data[: pos + 8 + n // 2]
        for label, length in (("long", n + 7), ("huge", 0xFFFFFFF0)):
            wrong = bytearray(data)
            wrong[pos : pos + 4] = struct.pack(">I", length)
            yield f"{name} length {label}", bytes(wrong)
    pos, n, _ = chunks[0]
    ihdr = data[pos + 8 : pos + 8 + n]
    edits = {"10^10 pixels": struct.pack(">II", 100_000, 100_000) + ihdr[8:],
             "2^31 x 1 pixels": struct.pack(">II", 2**31 - 1, 1) + ihdr[8:],
             "width 0": struct.pack(">II", 0, 512) + ihdr[8:],
             "7000 x 7000 pixels": struct.pack(">II", 7000, 7000) + ihdr[8:],
             "bit depth 3": ihdr[:8] + b"\x03" + ihdr[9:],
             "bit depth 16": ihdr[:8] + b"\x10" + ihdr[9:],
             "colour type 9": ihdr[:9] + b"\x09" + ihdr[10:],
             "interlaced": ihdr[:12] + b"\x01"}  # fmt: skip
    for label, body in edits.items():
        yield f"IHDR {label}", data[:pos] + _chunk(b"IHDR", body) + data[pos + 12 + n :]
    idat = next(c for c in chunks if c[2] == b"IDAT")
    iend = next(c for c in chunks if c[2] == b"IEND")
    short = _chunk(b"IDAT", data[idat[0] + 8 : idat[0] + 8 + idat[1] // 3])
    yield "IDAT truncated (valid CRC)", data[: idat[0]] + short + data[iend[0] :]
    yield from _random(data, rng, 8, n_random)


def dicom_elements(data: bytes) -> list[tuple[int, tuple[int, int], bytes, int, int]]:
    """(offset, tag, VR, header length, value length) of the top-level elements of an explicit
    VR little-endian Part 10 file."""
    pos, out = 132, []
    while pos + 8 <= len(data):
        group, elem = struct.unpack("<HH", data[pos : pos + 4])
        vr = data[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            (n,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            head = 12
        else:
            (n,) = struct.unpack("<H", data[pos + 6 : pos + 8])
            head = 8
        out.append((pos, (group, elem), vr, head, n))
        if n == 0xFFFFFFFF:
            break
        pos += head + n
    return out


def replace_element(data: bytes, tag: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    for pos, t, _, head, n in dicom_elements(data):
        if t == tag:
            if vr in LONG_VRS:
                header = struct.pack("<HH", *tag) + vr + b"\0\0" + struct.pack("<I", len(value))
            else:
                header = struct.pack("<HH", *tag) + vr + struct.pack("<H", len(value))
            return data[:pos] + header + value + data[pos + head + n :]
    raise KeyError(tag)


def drop_element(data: bytes, tag: tuple[int, int]) -> bytes:
    for pos, t, _, head, n in dicom_elements(data):
        if t == tag:
            return data[:pos] + data[pos + head + n :]
    raise KeyError(tag)


def insert_frames(data: bytes, value: bytes) -> bytes:
    """A NumberOfFrames (0028,0008) element of ``value`` inserted in tag order."""
    pos = next(p for p, t, *_ in dicom_elements(data) if t >= (0x28, 0x8))
    return data[:pos] + struct.pack("<HH", 0x28, 0x8) + b"IS" + struct.pack("<H", len(value)) + value + data[pos:]


def dicom_mutations(data: bytes, rng: random.Random, n_random: int = 10) -> Iterator[Mutation]:
    """Mutations of a DICOM written by ``serve_helpers.dicom_bytes`` (explicit VR LE)."""
    us = lambda *v: struct.pack(f"<{len(v)}H", *v)
    named = {
        "Rows of two values": (ROWS, b"US", us(512, 512)),
        "Rows of three values": (ROWS, b"US", us(5, 6, 7)),
        "Columns of two values": (COLUMNS, b"US", us(512, 512)),
        "Rows of one byte (odd length)": (ROWS, b"US", b"\x05"),
        "Rows empty": (ROWS, b"US", b""),
        "Rows zero": (ROWS, b"US", us(0)),
        "Rows as decimal string": (ROWS, b"DS", b"5.5 "),
        "BitsAllocated of two values": ((0x28, 0x100), b"US", us(16, 16)),
        "BitsAllocated 7": ((0x28, 0x100), b"US", us(7)),
        "BitsStored of two values": ((0x28, 0x101), b"US", us(12, 12)),
        "SamplesPerPixel 3": ((0x28, 0x2), b"US", us(3)),
        "PixelRepresentation 2": ((0x28, 0x103), b"US", us(2)),
        "Photometric of two values": ((0x28, 0x4), b"CS", b"MONOCHROME1\\MONOCHROME2 "),
        "Photometric palette": ((0x28, 0x4), b"CS", b"PALETTE COLOR "),
        "RescaleSlope not a number": ((0x28, 0x1053), b"DS", b"abc "),
        "RescaleSlope of two values": ((0x28, 0x1053), b"DS", b"1\\2 "),
        "RescaleIntercept not a number": ((0x28, 0x1052), b"DS", b"x "),
        "WindowWidth not a number": ((0x28, 0x1051), b"DS", b"abc "),
        "WindowWidth zero": ((0x28, 0x1051), b"DS", b"0 "),
        "pixel data short": (PIXEL_DATA, b"OW", b"\0" * 100),
        "pixel data of odd length": (PIXEL_DATA, b"OB", b"\0" * 101),
        "pixel data empty": (PIXEL_DATA, b"OW", b""),
    }
    for label, (tag, vr, value) in named.items():
        yield label, replace_element(data, tag, vr, value)
    yield "no pixel data", drop_element(data, PIXEL_DATA)
    yield "no Rows", drop_element(data, ROWS)
    for value in (b"0 ", b"abc ", b"99999999", b"2 ", b"1\\2 ", b"1.5 "):
        yield f"NumberOfFrames {value.decode().strip()}", insert_frames(data, value)
    for pos, tag, _, head, n in dicom_elements(data):
        if head != 8:
            continue
        where = f"({tag[0]:04X},{tag[1]:04X})"
        for label, edit in (("unknown VR", (4, b"ZZ")), ("binary VR", (4, b"\x00\x01")),
                            ("odd length +1", (6, struct.pack("<H", n + 1))),
                            ("length -1", (6, struct.pack("<H", max(n - 1, 0)))),
                            ("length 65535", (6, b"\xff\xff"))):  # fmt: skip
            changed = bytearray(data)
            changed[pos + edit[0] : pos + edit[0] + 2] = edit[1]
            yield f"{where} {label}", bytes(changed)
    for syntax, label in ((b"1.2.3.4.5.6.7.8.9.1\x00", "unknown"), (b"1.2.840.10008.1.2.2\x00", "big endian"),
                          (b"1.2.840.10008.1.2.4.50", "JPEG baseline")):  # fmt: skip
        yield f"transfer syntax {label}", data.replace(b"1.2.840.10008.1.2.1\x00", syntax, 1)
    yield from _random(data, rng, 132, n_random, end=min(len(data), 600))


def jpeg_mutations(data: bytes, rng: random.Random, n_random: int = 20) -> Iterator[Mutation]:
    """A JPEG's frame header (SOF) sizes zeroed and maxed, random bytes in its headers and
    entropy-coded data, cuts."""
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    for label, size in (("0 x 0", b"\x00\x00\x00\x00"), ("65535 x 65535", b"\xff\xff\xff\xff")):
        changed = bytearray(data)
        changed[sof + 5 : sof + 9] = size
        yield f"SOF {label}", bytes(changed)
    yield from _random(data, rng, 2, n_random // 2, end=min(len(data), 1200))
    yield from _random(data, rng, 2, n_random // 2)


def _random(data: bytes, rng: random.Random, start: int, n: int, end: int | None = None) -> Iterator[Mutation]:
    end = end or len(data)
    for k in range(n):
        changed = bytearray(data)
        for _ in range(rng.randrange(1, 12)):
            changed[rng.randrange(start, end)] = rng.randrange(256)
        yield f"random bytes #{k}", bytes(changed)
    for cut in sorted({start + 1, start + 12, (start + end) // 2, len(data) // 2, len(data) - 1}):
        yield f"cut at byte {cut}", data[:cut]
