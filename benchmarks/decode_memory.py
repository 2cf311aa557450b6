"""Peak memory per pixel of decoding an upload (decode_bytes, then the model input and the PNG preview), the
figures services/imaging/budget.py reserves. Each file is decoded in a fresh process; prints a table, writes JSON.
`--target-side 128` measures the reduced decode a search makes (services.imaging.reduce) instead of a full one.

    python -m benchmarks.decode_memory [--side 4000] [--target-side 128] [--out decode_memory.json]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import sys
from services.api.images import to_png
from services.imaging import decode_bytes, to_model_input
def field(name):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(name + ":"))
data = open(sys.argv[1], "rb").read()
target = int(sys.argv[2]) or None
open("/proc/self/clear_refs", "w").write("5")
base = field("VmRSS")
image = decode_bytes(data, "x", max_pixels=10**9, min_side=1, target_side=target)
to_model_input(image.pixels, target or 224, extent=image.extent)
to_png(image.pixels, target or 768, extent=image.extent)
print(field("VmHWM") - base)
"""


COMPRESSED = {"dicom-j2k": "1.2.840.10008.1.2.4.90", "dicom-jpegls": "1.2.840.10008.1.2.4.80"}


def _files(side: int, folder: Path) -> dict[str, Path]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ramp = np.add.outer(np.linspace(0, 0.6, side), np.linspace(0, 0.3, side))
    names = {"png-8bit": "a.png", "png-16bit": "b.png", "png-rgb": "c.png", "jpeg": "d.jpg"}
    dicoms = {"dicom-16bit": "e.dcm", "dicom-16bit-window": "f.dcm", "dicom-j2k": "g.dcm", "dicom-jpegls": "h.dcm"}
    out = {k: folder / v for k, v in {**names, **dicoms}.items()}
    grey = (ramp * 255).astype(np.uint8)
    Image.fromarray(grey).save(out["png-8bit"])
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(out["png-16bit"])
    Image.fromarray(np.stack([grey] * 3, -1)).save(out["png-rgb"])
    Image.fromarray(grey).save(out["jpeg"], quality=85)
    for key in dicoms:
        window = key != "dicom-16bit"
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", side, side, 1
        ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME1", 16, 12, 11
        ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 0, 1, 0
        if window:
            ds.WindowCenter, ds.WindowWidth = 2000, 3000
        ds.PixelData = (ramp * 4095).astype(np.uint16).tobytes()
        if key in COMPRESSED:
            ds.compress(COMPRESSED[key], encoding_plugin="pylibjpeg" if key == "dicom-j2k" else "pyjpegls")
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out[key].write_bytes(buf.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4000)
    parser.add_argument("--target-side", type=int, default=0, help="reduced decode for this side (0: full)")
    parser.add_argument("--out", type=Path, default=Path("decode_memory.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, path in _files(args.side, Path(tmp)).items():
            peak = int(subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.target_side)],
                                      capture_output=True, text=True, check=True).stdout)  # fmt: skip
            rows.append({"kind": kind, "pixels": args.side**2, "file_bytes": path.stat().st_size,
                         "target_side": args.target_side or None, "peak_bytes": peak,
                         "bytes_per_pixel": round(peak / args.side**2, 1)})  # fmt: skip
    print(f"{'kind':<20} {'file KB':>9} {'peak MB':>9} {'B/px':>6}")
    for r in rows:
        kb, mb = r["file_bytes"] / 1024, r["peak_bytes"] / 2**20
        print(f"{r['kind']:<20} {kb:>9.0f} {mb:>9.0f} {r['bytes_per_pixel']:>6}")
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
