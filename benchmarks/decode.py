"""Decoding at the model's resolution (services.imaging.reduce) against today's full-size decode, in one run.

Sections, each row beside its baseline from the same run:
- decode: images/s (median of alternating rounds) and peak RSS (a fresh process per file and method) of today's
  decode (`decode_bytes` at full size, then `to_model_input`) against the reduced one (`target_side`, then
  `to_model_input` with the extent), on cxr-public JPEGs, the pydicom-data chest CR (RG1: explicit VR and JPEG 2000),
  copies upscaled to 2,500-3,000 px (explicit VR, JPEG 2000, JPEG-LS; each JPEG 2000 frame takes the half-resolution
  level, odd factors included) and a large 8-bit PNG;
- equivalence: per data set, the lowest cosine between the embeddings of the two decodes (eager fp32), and the same
  for two rejected alternatives: JPEG DCT scaling (Pillow's `draft`) and coarser JPEG 2000 levels;
- index: inline `cxr index` (the Ingestor, decoding in threads, as the CLI runs it) against the encoder alone on
  pre-decoded arrays of the same files at the same batch size, alternating rounds, median.

Run `python -m benchmarks.decode --model DIR` (a trained checkpoint: equivalence means little on random weights);
`--quick` for a smoke run. Prints a table and writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "decode.json"
PEAK = """
import sys
from services.imaging import decode_bytes, to_model_input
def field(name):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(name + ":"))
data, side, target = open(sys.argv[1], "rb").read(), int(sys.argv[2]), int(sys.argv[3]) or None
open("/proc/self/clear_refs", "w").write("5")
base = field("VmRSS")
image = decode_bytes(data, "x", max_pixels=10**9, target_side=target)
to_model_input(image.pixels, side, extent=image.extent)
print(field("VmHWM") - base)
"""


def today(data: bytes, side: int) -> np.ndarray:
    from services.imaging import decode_bytes, to_model_input

    return to_model_input(decode_bytes(data, "x", max_pixels=10**9).pixels, side)


def reduced(data: bytes, side: int) -> np.ndarray:
    from services.imaging import decode_bytes, to_model_input

    image = decode_bytes(data, "x", max_pixels=10**9, target_side=side)
    return to_model_input(image.pixels, side, extent=image.extent)


def jpeg_draft(data: bytes, side: int) -> np.ndarray:
    """The rejected alternative: libjpeg's DCT scaling to the largest 1/2, 1/4, 1/8 the box factors allow."""
    from services.imaging import to_model_input
    from services.imaging.reduce import box_reduce, reduction_factors

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        scale = next((s for s in (8, 4, 2) if s <= min(reduction_factors(height, width, side))), 1)
        image.draft("L", (width // scale, height // scale))
        grey = np.asarray(image.convert("L"))
    down, across = reduction_factors(*grey.shape, side)
    pixels = (box_reduce(grey, (down, across)) / 255.0).astype(np.float32)
    extent = (height / scale / down, width / scale / across)
    return to_model_input(pixels, side, extent=extent)


def dicom_copy(source: Path, scale: float, syntax: str | None) -> bytes:
    """`source` upscaled by `scale` (bicubic, clipped to BitsStored), stored in `syntax` (None: as it is)."""
    import pydicom

    ds = pydicom.dcmread(source)
    stored = ds.pixel_array.astype(np.int32)
    size = (round(stored.shape[1] * scale), round(stored.shape[0] * scale))
    big = np.asarray(Image.fromarray(stored).resize(size, Image.Resampling.BICUBIC))
    ds.Rows, ds.Columns = big.shape
    pixels = np.clip(big, 0, 2**ds.BitsStored - 1).astype(np.uint16)
    if syntax is None:
        ds.PixelData = pixels.tobytes()
    else:
        ds.compress(syntax, pixels, encoding_plugin="pylibjpeg" if "4.9" in syntax else "pyjpegls")
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def large_png(side: int) -> bytes:
    """A grey PNG with many pixels and few bytes, like the issue's 198 KB 8,900 px file."""
    ramp = np.add.outer(np.arange(side) // 3, np.arange(side) // 5) % 256
    buf = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_sets(args: argparse.Namespace, dicom_dir: Path) -> dict[str, list[bytes]]:
    import csv

    with (args.data / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    jpegs = [(args.data / r["path"]).read_bytes() for r in rows[:: max(1, len(rows) // args.n)][: args.n]]
    rg1, rg3 = dicom_dir / "RG1_UNCR.dcm", dicom_dir / "RG3_UNCR.dcm"
    j2k, jls = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"
    return {
        "cxr-public JPEG": jpegs,
        "RG1 CR 1841x1955, explicit VR": [rg1.read_bytes()],
        "RG1 CR 1841x1955, JPEG 2000": [(dicom_dir / "RG1_J2KR.dcm").read_bytes()],
        "RG1 x1.45 (2669x2835), explicit VR": [dicom_copy(rg1, 1.45, None)],
        "RG1 x1.45, JPEG 2000": [dicom_copy(rg1, 1.45, j2k)],
        "RG1 x1.45, JPEG-LS": [dicom_copy(rg1, 1.45, jls)],
        "RG3 x1.5 (2640x2640), JPEG 2000": [dicom_copy(rg3, 1.5, j2k)],
        f"PNG 8-bit {args.png_side}x{args.png_side}": [large_png(args.png_side)],
    }


def rate(fn: Callable[[bytes, int], np.ndarray], files: list[bytes], side: int, repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        for data in files:
            fn(data, side)
    return repeat * len(files) / (time.perf_counter() - t0)


def peak_mb(data: bytes, side: int, target: int | None, tmp: Path) -> float:
    path = tmp / "peak.bin"
    path.write_bytes(data)
    cmd = [sys.executable, "-c", PEAK, str(path), str(side), str(target or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return int(out) / 2**20


def decode_rows(sets: dict[str, list[bytes]], args: argparse.Namespace, side: int, tmp: Path) -> dict:
    rounds: dict[str, dict[str, list[float]]] = {k: {"today": [], "reduced": []} for k in sets}
    for i in range(args.rounds):
        for kind, files in sets.items():
            repeat = 1 if len(files) > 1 or "PNG" in kind else args.repeat  # the large PNG: seconds each
            order = (("today", today), ("reduced", reduced))
            for name, fn in order if i % 2 == 0 else order[::-1]:
                rounds[kind][name].append(rate(fn, files, side, repeat))
    out = {}
    for kind, files in sets.items():
        med = {k: statistics.median(v) for k, v in rounds[kind].items()}
        peaks = {k: peak_mb(files[0], side, t, tmp) for k, t in (("today", None), ("reduced", side))}
        out[kind] = {
            "images_per_s": {k: round(v, 2) for k, v in med.items()},
            "speedup": round(med["reduced"] / med["today"], 2),
            "peak_rss_mb_first_file": {k: round(v, 1) for k, v in peaks.items()},
            "peak_ratio": round(peaks["reduced"] / max(peaks["today"], 1e-9), 3),
            "rounds_images_per_s": rounds[kind],
        }
    return out


def equivalence_rows(
    sets: dict[str, list[bytes]], dicom_dir: Path, real: list[bytes], model: Path, trained: bool
) -> dict:
    import services.imaging.jpeg2000 as jpeg2000
    from services.embedding import BatchEncoder

    encoder = BatchEncoder.from_checkpoint(model, bf16=False)
    side = encoder.image_size

    def min_cos(files: list[bytes], fn: Callable[[bytes, int], np.ndarray]) -> float:
        a = encoder.encode(np.stack([today(d, side) for d in files]))
        b = encoder.encode(np.stack([fn(d, side) for d in files]))
        return round(float((a * b).sum(axis=1).min()), 6)

    groups = {"pydicom-data CRs (RG1, RG3: explicit VR and JPEG 2000)": real, **sets}
    out: dict[str, object] = {name: min_cos(files, reduced) for name, files in groups.items()}
    out["share of cxr-public files reduced at all"] = round(
        float(np.mean([_reduced_at_all(d, side) for d in sets["cxr-public JPEG"]])), 3
    )
    upscaled = [_upscaled_jpeg(d, 8) for d in sets["cxr-public JPEG"][:24]]
    out["cxr-public JPEG x8 (1,800-2,560 px), reduced"] = min_cos(upscaled, reduced)
    out["rejected: the same, DCT scaling (draft)"] = min_cos(upscaled, jpeg_draft)
    # Copies whose factors at 128 px (8 and 12) a coarser level divides: RG3 x1.2 and x1.8, in JPEG 2000.
    j2k = [dicom_copy(dicom_dir / "RG3_UNCR.dcm", scale, "1.2.840.10008.1.2.4.90") for scale in (1.2, 1.8)]
    out["RG3 x1.2 and x1.8, JPEG 2000, reduced"] = min_cos(j2k, reduced)
    kept = jpeg2000.MAX_LEVEL
    for level in (2, 3):
        jpeg2000.MAX_LEVEL = level
        try:
            out[f"rejected: the JPEG 2000 files, levels up to {level}"] = min_cos(j2k, reduced)
        finally:
            jpeg2000.MAX_LEVEL = kept
    label = str(model) if trained else f"random-init vit-tiny at {side} px (pass --model for a trained one)"
    return {"model": label, "image_size": side, **out}


def _reduced_at_all(data: bytes, side: int) -> bool:
    from services.imaging import decode_bytes

    return decode_bytes(data, "x", target_side=side).reduction != (1, 1)


def _upscaled_jpeg(data: bytes, scale: int) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        big = image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def index_rows(files: list[Path], model: Path, args: argparse.Namespace, tmp: Path) -> dict:
    from services.embedding import BatchEncoder
    from services.index import QdrantEdgeStore
    from services.pipeline import IngestOptions, Ingestor, build_items
    from services.pipeline.ledger import Ledger

    encoder = BatchEncoder.from_checkpoint(
        model, batch_size=args.batch_size, backend=args.backend or None, cache_root=tmp / "models"
    )
    arrays = np.stack([reduced(f.read_bytes(), encoder.image_size) for f in files])
    encoder.encode(arrays[: args.batch_size])  # warm-up (and the back end's conversion)
    rounds: dict[str, list[float]] = {"encoder alone": [], "inline cxr index": []}
    for i in range(args.rounds):
        t0 = time.perf_counter()
        encoder.encode(arrays)
        rounds["encoder alone"].append(len(files) / (time.perf_counter() - t0))
        store = QdrantEdgeStore(tmp / f"index-{i}")
        store.create_collection("bench", encoder.dim)
        opts = IngestOptions(collection="bench", batch_size=args.batch_size, decode_workers=args.decode_workers)
        refs = Ledger(tmp / f"ledger-{i}.sqlite3").put_refs  # as `cxr index` records them
        report = Ingestor(encoder, store, opts, salt=b"bench-salt", refs=refs).run(build_items(files)[0])
        store.close()
        assert report.indexed == len(files), report.failed[:3]
        rounds["inline cxr index"].append(report.images_per_s)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    return {
        "n": len(files),
        "batch_size": args.batch_size,
        "decode_workers": args.decode_workers,
        "backend": args.backend or "eager",
        "images_per_s": {k: round(v, 1) for k, v in med.items()},
        "inline / encoder": round(med["inline cxr index"] / med["encoder alone"], 3),
        "target": 0.85,
        "rounds_images_per_s": rounds,
    }


def main() -> None:
    from services.config import Settings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr-public")
    p.add_argument("--model", type=Path, help="checkpoint folder (default: a random-init vit-tiny at 128 px)")
    p.add_argument("--n", type=int, default=300, help="cxr-public files (decode rows and the index rows)")
    p.add_argument("--repeat", type=int, default=6, help="decodes per single-file row per round")
    p.add_argument("--png-side", type=int, default=8900)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; each row keeps its median")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--backend", default=Settings().inference_backend or "", help="inference back end (index rows)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny N, small PNG, 2 rounds")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.quick:
        args.n, args.repeat, args.png_side, args.rounds = 16, 1, 2000, 2
    import data_store  # pydicom-data
    import torch

    torch.set_num_threads(args.threads)
    dicom_dir = Path(data_store.__file__).parent / "data"
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model = args.model
        if model is None:
            from services.embedding import create_encoder, save_checkpoint

            model = save_checkpoint(create_encoder("vit-tiny", image_size=128, seed=0), tmp / "vit-tiny-128")
        from services.embedding import read_checkpoint_config

        side = int(read_checkpoint_config(model)["encoder"]["image_size"])
        sets = data_sets(args, dicom_dir)
        real = [(dicom_dir / f"RG{n}_{k}.dcm").read_bytes() for n in (1, 3) for k in ("UNCI", "UNCR", "J2KI", "J2KR")]
        result = {
            "cores": os.cpu_count(),
            "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
            "model_side": side,
            "rule": f"median of {args.rounds} alternating rounds; peak RSS above a fresh process's resting size",
            "decode": decode_rows(sets, args, side, tmp),
            "equivalence_min_cosine": equivalence_rows(sets, dicom_dir, real, model, args.model is not None),
        }
        import csv

        with (args.data / "manifest.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        files = [args.data / r["path"] for r in rows[:: max(1, len(rows) // args.n)][: args.n]]
        result["index"] = index_rows(files, model, args, tmp)
        result["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def _print(result: dict) -> None:
    print(f"model input {result['model_side']} px; {result['rule']}")
    print(f"{'decode':40} {'today/s':>9} {'new/s':>9} {'x':>6} {'MB today':>9} {'MB new':>8} {'x':>6}")
    for kind, row in result["decode"].items():
        ips, mb = row["images_per_s"], row["peak_rss_mb_first_file"]
        print(f"{kind:40} {ips['today']:9.1f} {ips['reduced']:9.1f} {row['speedup']:6.2f} "
              f"{mb['today']:9.0f} {mb['reduced']:8.0f} {row['peak_ratio']:6.3f}")  # fmt: skip
    print(f"equivalence, lowest embedding cosine ({result['equivalence_min_cosine']['model']}):")
    for name, value in result["equivalence_min_cosine"].items():
        if name not in ("model", "image_size"):
            print(f"  {name:70} {value:.6f}")
    idx = result["index"]
    rates = idx["images_per_s"]
    print(f"index ({idx['n']} cxr-public files, batch {idx['batch_size']}, {idx['backend']}): encoder alone "
          f"{rates['encoder alone']}/s, inline cxr index {rates['inline cxr index']}/s, "
          f"ratio {idx['inline / encoder']} (target {idx['target']})")  # fmt: skip


if __name__ == "__main__":
    main()
