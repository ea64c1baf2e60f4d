"""Peak memory of decoding one 16-bit PNG upload (issue 23: a 95 KB 16-bit PNG once raised the
server's peak by 790 MB), in fresh subprocesses: peak RSS (``ru_maxrss``) of the decode minus
the RSS after the imports, for

- ``wide``: the scaling before the fix (``np.asarray(img).astype(int64).clip(...)``, ``+ 128``,
  ``// 257``: three full-size int64 temporaries), reproduced here as the reference;
- ``blocks``: :func:`cxrfuse.data.images.scale16_to8` (256 rows at a time);

each through the path an upload takes (:func:`cxrfuse.data.images.decode_resized_bytes`, the
model input) and the explain path (:func:`cxrfuse.data.images.gray8_bytes`, full size).

    python benchmarks/upload_memory.py                   # a 4,000 x 4,000 16-bit PNG
    python benchmarks/upload_memory.py --side 3000 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

from _common import machine_line

CHILD = r"""
import io, resource, sys
import numpy as np
from PIL import Image
import cxrfuse.data.images as images

def wide(pixels):
    w = np.asarray(pixels).astype(np.int64).clip(0, 65535)
    return ((w + 128) // 257).astype(np.uint8)

if sys.argv[2] == "wide":
    images.scale16_to8 = wide
data = open(sys.argv[1], "rb").read()
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
base = rss()
out = images.decode_resized_bytes(data, 224) if sys.argv[3] == "model input" else images.gray8_bytes(data)
print((rss() - base) / 1024, out.shape)
"""


def png16(side: int) -> bytes:
    """A ``side`` x ``side`` 16-bit PNG of a smooth ramp (compresses to tens of KB, as a hostile
    or a blank 16-bit upload does)."""
    import numpy as np
    from PIL import Image

    ramp = (np.arange(side, dtype=np.uint32)[None, :] * 16 % 65536).astype(np.uint16)
    img = Image.fromarray(np.repeat(ramp, side, axis=0))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    path = args.tmp / f"cxrfuse-upload16-{args.side}.png"
    path.write_bytes(png16(args.side))
    rows = []
    print(machine_line())
    print(f"{args.side} x {args.side} 16-bit PNG, {path.stat().st_size / 1024:.0f} KiB on disk")
    print("| path | scaling | peak RSS over the imports, MiB (min-max of repeats) |\n|---|---|---|")
    for where in ("model input", "full size"):
        for how in ("wide", "blocks"):
            peaks = []
            for _ in range(args.repeats):
                proc = subprocess.run([sys.executable, "-c", CHILD, str(path), how, where],
                                      capture_output=True, text=True, check=True)  # fmt: skip
                peaks.append(float(proc.stdout.split()[0]))
            rows.append({"path": where, "scaling": how, "peak_mib": [min(peaks), max(peaks)]})
            print(f"| {where} | {how} | {min(peaks):.0f}-{max(peaks):.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"side": args.side, "bytes": path.stat().st_size,
                                         "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
