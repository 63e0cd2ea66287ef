"""One self-contained static HTML page per run: metrics, curves, score histograms and a gallery.

Everything is inline (SVG curves, base64 PNG images, no external scripts or fonts), so the page works
offline. The gallery is sorted worst misses first: missed defects, then rejected good parts, then
the rest by score. A small script marks the page `data-status="ok"` once every image has decoded.
"""

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from defectmap import engine, metrics
from defectmap.checkpoint import atomic_write
from defectmap.data.images import load_image
from defectmap.errors import DataError
from defectmap.outputs import EXCEEDED, METRIC_NAMES, outline, regions_sentence, threshold_promise
from defectmap.regions import defect_pixels
from defectmap.threshold import normalise

STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
.charts{display:flex;flex-wrap:wrap;gap:16px}.card{display:inline-block;margin:4px;font-size:12px;vertical-align:top}
.card img{display:block;max-width:520px}.miss{color:#b00020;font-weight:bold}svg{background:#fafafa}"""

CHECK = """<script>window.addEventListener('load',function(){var imgs=document.images,ok=imgs.length>0;
for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0){ok=false;}}
document.body.setAttribute('data-images',String(imgs.length));
document.body.setAttribute('data-status',ok?'ok':'broken-images');});</script>"""


def svg_curve(title: str, xlabel: str, ylabel: str, curves: list[tuple[str, np.ndarray, np.ndarray, str]],
               xmax: float = 1.0) -> str:  # fmt: skip
    width, height, pad = 320, 260, 40
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle">{html.escape(title)}</text>',
             f'<rect x="{pad}" y="{pad - 14}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" '
             'stroke="#888"/>',
             f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">{xlabel}</text>',
             f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
             f"{ylabel}</text>"]  # fmt: skip
    for label, xs, ys, color in curves:
        step = max(1, len(xs) // 400)  # enough points for the eye, small pages
        xs, ys = np.append(xs[::step], xs[-1]), np.append(ys[::step], ys[-1])
        px = pad + np.clip(xs / xmax, 0, 1) * (width - 2 * pad)
        py = (height - pad - 14) - np.clip(ys, 0, 1) * (height - 2 * pad)
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px, py, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"><title>'
                     f"{html.escape(label)}</title></polyline>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(good: np.ndarray, bad: np.ndarray, threshold: float,
                  title: str = "image scores: good (blue) vs defective (red)") -> str:  # fmt: skip
    width, height, pad = 420, 260, 40
    values = np.concatenate([good, bad, [threshold]])
    edges = np.linspace(values.min(), values.max() + 1e-12, 31)
    counts = [np.histogram(v, edges)[0] for v in (good, bad)]
    peak = max(1, max(c.max() for c in counts))
    bar = (width - 2 * pad) / 30
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="score histogram">',
             f'<text x="{width / 2}" y="16" text-anchor="middle">{html.escape(title)}</text>']  # fmt: skip
    for count, color, offset in ((counts[0], "#1f77b4", 0), (counts[1], "#d62728", bar / 2)):
        for i, c in enumerate(count):
            h = c / peak * (height - 2 * pad)
            parts.append(f'<rect x="{pad + i * bar + offset:.1f}" y="{height - pad - h:.1f}" width="{bar / 2:.1f}" '
                         f'height="{h:.1f}" fill="{color}"/>')  # fmt: skip
    tx = pad + (threshold - edges[0]) / (edges[-1] - edges[0]) * (width - 2 * pad)
    parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{pad - 10}" y2="{height - pad}" stroke="#000" '
                 'stroke-dasharray="4 3"/>')  # fmt: skip
    parts.append(f'<text x="{tx:.1f}" y="{height - pad + 16}" text-anchor="middle">threshold</text></svg>')
    return "".join(parts)


def png_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def heat(values: np.ndarray) -> np.ndarray:
    """A blue-to-red colormap for values in [0, 1] (0.5 = the calibrated pixel threshold)."""
    v = np.clip(values, 0, 1)[..., None]
    return np.concatenate([np.clip(2 * v, 0, 1), 1 - np.abs(2 * v - 1), np.clip(2 - 2 * v, 0, 1)], axis=-1)


def _panel(path: str, amap: np.ndarray, mask: np.ndarray | None, calibration: dict, side: int = 256) -> str:
    """Image | heat-map overlay with the ground-truth contour (green) | predicted mask."""
    image = load_image(path)
    colours = heat(normalise(amap, calibration["map_median"], calibration["map_threshold"]))
    overlay = 0.55 * image + 0.45 * colours
    if mask is not None and mask.any():
        overlay[outline(mask)] = [0.0, 1.0, 0.0]
    predicted = np.repeat(defect_pixels(amap, calibration)[..., None], 3, axis=2).astype(np.float32)
    row = np.concatenate([image, overlay, predicted], axis=1)
    scale = side / image.shape[0]
    row = Image.fromarray(np.round(np.clip(row, 0, 1) * 255).astype(np.uint8))
    row = row.resize((max(1, round(row.width * scale)), side), Image.BILINEAR)
    return png_uri(np.asarray(row))


def _gallery_order(labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    missed = [i for i in np.argsort(scores) if labels[i] == 1 and scores[i] <= threshold]
    rejected = [i for i in np.argsort(-scores) if labels[i] == 0 and scores[i] > threshold]
    rest = [i for i in np.argsort(-scores) if i not in set(missed) | set(rejected)]
    return [int(i) for i in missed + rejected + rest]


def _sentence(text: str) -> str:
    """A clause as a sentence: first letter upper case, the rest as it is (`str.capitalize` lowers it), a full stop."""
    return text[0].upper() + text[1:] + "."


def _defect_table(defect_types: dict[str, dict]) -> str:
    """HTML table of the per-defect-type breakdown `engine.evaluate` reports."""
    rows = []
    for defect, row in defect_types.items():
        auroc = "n/a" if row["image_auroc"] is None else f"{row['image_auroc']:.4f}"
        rows.append(f"<tr><td>{html.escape(defect)}</td><td>{row['images']}</td><td>{auroc}</td>"
                    f"<td>{row['missed']}</td></tr>")  # fmt: skip
    header = "<tr><th>defect type</th><th>images</th><th>image AUROC against the good images</th><th>missed</th></tr>"
    return f"<table>{header}{''.join(rows)}</table>"


def write_report(detector, category, out_dir: str | Path, *, gallery_size: int = 24,
                 progress: bool = True) -> tuple[Path, dict]:  # fmt: skip
    """Evaluate `detector` on the test split of `category`, write OUT_DIR/report.html; (path, metrics)."""
    outputs = engine.test_outputs(detector, category, progress=progress)
    report = engine.evaluate(detector, category, outputs=outputs)
    labels, scores = np.array(outputs["labels"]), np.array(outputs["scores"])
    threshold = detector.calibration["threshold"]
    cells = "".join(f"<td>{'n/a' if report[m] is None else f'{report[m]:.4f}'}</td>" for m in METRIC_NAMES)
    body = [
        f"<h1>defectmap report: {html.escape(report['method'])} on {html.escape(report['category'])}</h1>",
        "<table><tr><th>category</th>" + "".join(f"<th>{m}</th>" for m in METRIC_NAMES) + "</tr>",
        f"<tr><td>{html.escape(report['category'])}</td>{cells}</tr></table>",
        f"<p>{report['test_images']} test images ({report['defective_images']} defective). At the threshold "
        f"{threshold:.5g} (set on good validation images only): <b>{report['good_rejected']} good parts "
        f"rejected / {report['defects_missed']} defects missed</b>. F1-max uses an oracle threshold.</p>",
    ]
    if promised := threshold_promise(report):
        exceeded = f" <b>{html.escape(_sentence(EXCEEDED))}</b>" if promised[1] else ""
        body.append(f"<p>{html.escape(_sentence(promised[0]))}{exceeded}</p>")
    if report.get("regions"):
        body.append(f"<p>{html.escape(_sentence(regions_sentence(report['regions'])))}</p>")
    if report.get("image_auroc_interval95"):
        low, high = report["image_auroc_interval95"]
        body.append(f"<p>Image AUROC, 95% bootstrap interval over the test images: {low:.4f} to {high:.4f} (how far "
                    "it could move on another test set of this size and mix).</p>")  # fmt: skip
    if report["defect_types"]:
        body.append(_defect_table(report["defect_types"]))
    fpr, tpr = metrics.roc_curve(labels, scores)
    charts = [svg_curve("image ROC", "FPR", "TPR", [("ROC", fpr, tpr, "#1f77b4")])]
    if category.has_masks:
        recall, precision = metrics.pr_curve(outputs["masks"], outputs["maps"])
        charts.append(
            svg_curve("pixel precision-recall", "recall", "precision", [("PR", recall, precision, "#2ca02c")])
        )
        pro_fpr, pro = metrics.pro_curve(outputs["masks"], outputs["maps"], 0.3)
        charts.append(svg_curve("PRO up to FPR 0.3", "FPR", "PRO", [("PRO", pro_fpr, pro, "#9467bd")], xmax=0.3))
    charts.append(svg_histogram(scores[labels == 0], scores[labels == 1], threshold))
    body.append('<div class="charts">' + "".join(charts) + "</div>")
    body.append(
        "<h2>Gallery (worst misses first): image | anomaly map with ground truth in green | predicted mask</h2>"
    )
    for i in _gallery_order(labels, scores, threshold)[:gallery_size]:
        sample = category.test[i]
        miss = (labels[i] == 1) == (scores[i] <= threshold)
        verdict = "missed defect" if labels[i] == 1 and miss else "rejected good part" if miss else "correct"
        amap = outputs["maps"][i] if category.has_masks else None
        if amap is None:  # no ground truth: compute the map for the gallery alone
            amap = next(engine.predict(detector, [sample], progress=False))["map"]
        mask = outputs["masks"][i] if category.has_masks else None
        body.append(f'<div class="card"><img alt="{html.escape(sample.path.name)}" '
                    f'src="{_panel(str(sample.path), amap, mask, detector.calibration)}">'
                    f'<span class="{"miss" if miss else ""}">{html.escape(sample.defect)} / '
                    f"{html.escape(sample.path.name)}: score {scores[i]:.4g}, {verdict}</span></div>")  # fmt: skip
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>defectmap report</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}{CHECK}</body></html>")  # fmt: skip
    path = Path(out_dir) / "report.html"
    atomic_write(path, lambda tmp: tmp.write_text(page))
    return path, report


def report_run(run_dir: str | Path, progress: bool = True) -> Path:
    """`defectmap report RUN_DIR`: the report of a training run folder (its model.ckpt)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.ckpt").is_file():
        raise DataError(f"no model.ckpt or scores.csv in {run_dir}: give the --out folder of `defectmap train`, "
                        "`predict` or `watch`")  # fmt: skip
    detector = engine.load(run_dir / "model.ckpt")
    return write_report(detector, engine.test_split(detector), run_dir, progress=progress)[0]
