"""Peak memory of decoding one 16-bit upload (issue 23: a 95 KB 16-bit PNG once raised the
server's peak by 790 MB), a PNG and a DICOM, in fresh subprocesses: peak RSS (``ru_maxrss``)
of the decode minus the RSS after the imports, for

- ``wide``: the scaling before the fix, reproduced here as the reference (PNG:
  ``np.asarray(img).astype(int64).clip(...)``, ``+ 128``, ``// 257``, three full-size int64
  temporaries; DICOM: ``(v - lo) / (hi - lo)``, ``1 - s``, ``* 255``, ``round``, one float64
  temporary each);
- ``blocks``: :func:`cxrfuse.data.images.scale16_to8` (256 rows at a time) and
  :func:`cxrfuse.data.dicom.window_to_gray8` (in place);

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
import cxrfuse.data.dicom as dicom
import cxrfuse.data.images as images

def wide(pixels):
    w = np.asarray(pixels).astype(np.int64).clip(0, 65535)
    return ((w + 128) // 257).astype(np.uint8)

def window_copies(values, invert=False):
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if invert:
        scaled = 1.0 - scaled
    return np.round(scaled * 255.0).astype(np.uint8)

if sys.argv[2] == "wide":
    images.scale16_to8, dicom.window_to_gray8 = wide, window_copies
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


def dicom16(side: int) -> bytes:
    """A ``side`` x ``side`` 12-bit MONOCHROME2 DICOM (explicit VR little endian) with a
    rescale slope and a window, so both LUTs run (pydicom)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", side, side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 1000, 3000
    ramp = (np.arange(side, dtype=np.uint32) % 4096).astype(np.uint16)
    ds.PixelData = np.repeat(ramp[None, :], side, axis=0).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    files = {"png": args.tmp / f"cxrfuse-upload16-{args.side}.png",
             "dicom": args.tmp / f"cxrfuse-upload16-{args.side}.dcm"}  # fmt: skip
    files["png"].write_bytes(png16(args.side))
    files["dicom"].write_bytes(dicom16(args.side))
    rows = []
    print(machine_line())
    for kind, path in files.items():
        print(f"{args.side} x {args.side} 16-bit {kind}: {path.stat().st_size / 1024:.0f} KiB")
    print("| file | path | scaling | peak RSS over the imports, MiB (min-max of repeats) |\n"
          "|---|---|---|---|")  # fmt: skip
    for kind, path in files.items():
        for where in ("model input", "full size"):
            for how in ("wide", "blocks"):
                peaks = []
                for _ in range(args.repeats):
                    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), how, where],
                                          capture_output=True, text=True, check=True)  # fmt: skip
                    peaks.append(float(proc.stdout.split()[0]))
                rows.append({"file": kind, "bytes": path.stat().st_size, "path": where,
                             "scaling": how, "peak_mib": [min(peaks), max(peaks)]})  # fmt: skip
                print(f"| {kind} | {where} | {how} | {min(peaks):.0f}-{max(peaks):.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"side": args.side, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
