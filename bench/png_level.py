"""What the PNG compression level costs `predict`: encoding time and file size of its maps, masks and overlays.

    python bench/png_level.py RUN/model.ckpt IMAGES_DIR [--limit 100] [--levels 6,1] [--out F]

Scores the images once, then writes every image's anomaly map, defect mask and overlay (as `predict --overlay`
does, through `defectmap.outputs`) to memory at each zlib level, one level after the other in the same process, and
reports milliseconds per image and bytes per image for each kind. Level 6 is PIL's default, 1 what predict uses.
"""

import argparse
import json
import time
from io import BytesIO
from pathlib import Path

from defectmap import engine, outputs
from defectmap.data.images import load_image
from defectmap.regions import defect_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("images")
    parser.add_argument("--limit", type=int, default=100, help="images, the first by name")
    parser.add_argument("--levels", default="6,1")
    parser.add_argument("--out", default="bench/results/png_level_cpu.json")
    args = parser.parse_args()
    detector = engine.load(args.checkpoint, device="cpu")
    found = outputs.collect_images([args.images])[: args.limit]
    rows = list(engine.predict(detector, [sample for sample, _ in found], progress=False))
    cal = detector.calibration
    cases = [(r["map"], defect_pixels(r["map"], cal), load_image(r["path"])) for r in rows if "error" not in r]
    writers = {
        "map": lambda m, d, image, f: outputs.map_to_png(m, cal, f),
        "mask": lambda m, d, image, f: outputs.mask_to_png(d, f),
        "overlay": lambda m, d, image, f: outputs.overlay_to_png(image, d, f),
    }
    result = {"checkpoint": args.checkpoint, "images": len(cases), "levels": {}}
    for level in (int(text) for text in args.levels.split(",")):
        outputs.PNG_LEVEL = level
        figures = {}
        for kind, write in writers.items():
            seconds, size = 0.0, 0
            for anomaly_map, defect, image in cases:
                buffer = BytesIO()
                start = time.perf_counter()
                write(anomaly_map, defect, image, buffer)
                seconds += time.perf_counter() - start
                size += buffer.tell()
            ms, per_image = round(1000 * seconds / len(cases), 2), size // len(cases)
            figures[kind] = {"ms_per_image": ms, "bytes_per_image": per_image}
            print(f"level {level} {kind:8s} {ms:7.2f} ms  {per_image} B")
        result["levels"][str(level)] = figures
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
