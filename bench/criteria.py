"""Where the research criteria of issues #3, #4 and #5 stand, recomputed from the stored three-seed results.

    python bench/criteria.py [--out bench/results/criteria.json]

Each criterion says "beats ... by more than two standard deviations of the seeds". For the closest measured pair of
each, this pairs the two rows by seed with `defectmap.comparison.pair_difference` (the benchmark's own "against the
first model" rule: mean difference above twice the larger row's std over seeds) and prints a Markdown table. It
reads bench/results only; it trains nothing.
"""

import argparse
import json
import re
from pathlib import Path

from compare import read_holdout  # bench/ is the script's folder, so on sys.path

from defectmap.comparison import METRICS, pair_difference, rows_by_category

RESULTS = Path(__file__).resolve().parent / "results"


def benchmark_rows(folder: str) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {seed: {metric: value}}} from a Magnetic Tile benchmark's results.json."""
    runs = json.loads((RESULTS / folder / "results.json").read_text())["runs"]
    return rows_by_category(runs)["magnetic_tile"]


def granularity_rows(folder: str) -> dict[str, dict[int, dict[str, float]]]:
    """{"scale<S>": {seed: {metric: value}}} from a `defectmap granularity` study."""
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for run in json.loads((RESULTS / folder / "granularity.json").read_text())["runs"]:
        rows.setdefault(f"scale{run['scale']}", {})[int(run["seed"])] = {m: run[m] for m in METRICS if m in run}
    return rows


def checkpoint_seed(path: str) -> int:
    """The seed of a benchmark checkpoint, from its path (.../seed<N>/model.ckpt)."""
    return int(re.search(r"seed(\d+)", path).group(1))


def hee_rows(file: str) -> dict[str, dict[int, dict[str, float]]]:
    """{"<method>" or "<method>+hee": {seed: {metric: value}}} from bench/hee.py's output."""
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for entry in json.loads((RESULTS / file).read_text()):
        seed = checkpoint_seed(entry["checkpoint"])
        label = entry["method"] + ("+hee" if entry["hee"] else "")
        rows.setdefault(label, {})[seed] = {m: entry[m] for m in METRICS}
    return rows


def rescored_rows(file: str) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {seed: {metric: value}}} from bench/postprocess.py's output (the seed from each checkpoint's path)."""
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for run in json.loads((RESULTS / file).read_text())["runs"]:
        seed = checkpoint_seed(run["checkpoint"])
        rows.setdefault(run["variant"], {})[seed] = {m: run[m] for m in METRICS}
    return rows


def near_copy_rows(folder: str, subset: str) -> dict[str, dict[int, dict[str, float]]]:
    """{"k0" / "k10": {seed: {metric: value}}} from bench/near_copies.py's seed<N>.json files (the k = 0 checkpoint
    first), on one of its test subsets ("all", "without_near_copies_<threshold>")."""
    rows: dict[str, dict[int, dict[str, float]]] = {"k0": {}, "k10": {}}
    for path in sorted((RESULTS / folder).glob("seed*.json")):
        seed = int(re.search(r"seed(\d+)", path.name).group(1))
        for label, run in zip(("k0", "k10"), json.loads(path.read_text())["runs"], strict=True):
            rows[label][seed] = {m: run[subset][m] for m in METRICS if m in run[subset]}
    return rows


def criteria() -> list[dict]:
    ae_128 = benchmark_rows("granularity_mt128_3seeds")["ae"]  # 128², 15 epochs, patience 8, channels-last
    daad_plus = granularity_rows("granularity_daadplus_mt128")
    long60 = benchmark_rows("long60_mt_cpu128")
    averaged = benchmark_rows("benchmark_mt_cpu128_ema")  # train.ema_decay=0.995
    hee = hee_rows("ablation_mt_cpu128/hee.json")
    prn = benchmark_rows("benchmark_mt_prn256_pertype")
    retrained = near_copy_rows("near_copies_mt", "all")  # the same recipe, trained again in session 27
    no_copies = {t: near_copy_rows("near_copies_mt", f"without_near_copies_{t}") for t in ("0.5", "0.7")}
    again = {m: benchmark_rows(f"unseen_parts_mt/{m}_all")[m] for m in ("ae", "daad")}  # sessions 29-30
    again["pmb+hee"] = rescored_rows("unseen_parts_mt/postprocess_pmb_all.json")["pmb + hee"]
    denoised = {m: rescored_rows(f"denoise_mt_cpu128/postprocess_{m}.json") for m in ("ae", "daad", "pmb")}
    denoised_averaged = {
        m: rescored_rows(f"denoise_mt_cpu128/averaged/postprocess_{m}.json") for m in ("ae", "daad", "pmb")
    }
    probe = {**benchmark_rows("select_probe_mt128/ae_daad"), **benchmark_rows("select_probe_mt128/pmb_hee")}
    cases = [
        ("#3", "DAAD+ beats the AE on image AUROC", ("image_auroc",),
         "DAAD+ (default blocks, scale 8) vs AE, 128², 15 epochs", daad_plus["scale8"], ae_128),
        ("#3", "", ("image_auroc",), "DAAD+ at block scale 16 vs AE, same recipe", daad_plus["scale16"], ae_128),
        ("#3", "", ("image_auroc",), "DAAD+ at block scale 32 vs AE, same recipe", daad_plus["scale32"], ae_128),
        ("#3", "", ("image_auroc",), "DAAD+ vs AE, the default recipe trained again (sessions 29-30)",
         again["daad"], again["ae"]),
        ("#3", "", ("image_auroc",), "DAAD+ vs AE, 128², 60 epochs, normalize + HEE", long60["daad"], long60["ae"]),
        ("#3", "", ("image_auroc",), "DAAD+ vs AE, both with averaged weights, 128², 15 epochs", averaged["daad"],
         averaged["ae"]),
        ("#3", "", ("image_auroc",), "DAAD+ vs AE, both trained to rebuild clean images (model.denoise_share=0.5)",
         denoised["daad"]["daad + none"], denoised["ae"]["ae + none"]),
        ("#3", "", ("image_auroc",), "DAAD+ vs AE, both trained to rebuild clean images, averaged weights",
         denoised_averaged["daad"]["daad + none"], denoised_averaged["ae"]["ae + none"]),
        ("#3", "", ("image_auroc",), "DAAD+ vs AE, both trained to rebuild clean images, averaged weights, n + HEE",
         denoised_averaged["daad"]["daad + normalize+hee"], denoised_averaged["ae"]["ae + normalize+hee"]),
        ("#3", "", ("image_auroc",), "DAAD+ vs AE, both keeping the epoch the synthetic probe rates best "
         "(train.select=probe), 128², 15 epochs", probe["daad"], probe["ae"]),
        ("#4", "PMB + HEE beats the AE on image AUROC and AU-PRO", ("image_auroc", "aupro"),
         "PMB + HEE vs AE, 128², 15 epochs", hee["pmb+hee"], hee["ae"]),
        ("#4", "", ("image_auroc", "aupro"), "PMB + HEE vs AE, the default recipe trained again (sessions 29-30)",
         again["pmb+hee"], again["ae"]),
        ("#4", "", ("image_auroc", "aupro"), "PMB + HEE vs AE, both trained to rebuild clean images",
         denoised["pmb"]["pmb + hee"], denoised["ae"]["ae + none"]),
        ("#4", "", ("image_auroc", "aupro"), "PMB + HEE vs AE, both trained to rebuild clean images, averaged weights",
         denoised_averaged["pmb"]["pmb + hee"], denoised_averaged["ae"]["ae + none"]),
        ("#4", "", ("image_auroc", "aupro"), "PMB + HEE vs AE, both keeping the epoch the synthetic probe rates "
         "best (train.select=probe)", probe["pmb_hee"], probe["ae"]),
        ("#5", "PRN k = 10 beats k = 0 on image AUROC, pixel AUROC and AU-PRO", ("image_auroc", "pixel_auroc", "aupro"),
         "k = 10 (half synthetic, per-type draws) vs k = 0, 256², 12 epochs", prn["prn_k10_synthetic_half"],
         read_holdout(RESULTS / "benchmark_mt_prn256_pertype" / "holdout_k0.json")),
        ("#5", "", ("image_auroc", "pixel_auroc", "aupro"), "the same recipe trained again (runs/s27)",
         retrained["k10"], retrained["k0"]),
        ("#5", "", ("image_auroc", "pixel_auroc", "aupro"), "the same checkpoints, without the test images that are "
         "near-copies of the training anomalies (similarity 0.7)", no_copies["0.7"]["k10"], no_copies["0.7"]["k0"]),
        ("#5", "", ("image_auroc", "pixel_auroc", "aupro"), "the same, near-copies at similarity 0.5 (some other "
         "tiles among them)", no_copies["0.5"]["k10"], no_copies["0.5"]["k0"]),
    ]  # fmt: skip
    table = []
    for issue, criterion, metrics, pair, a, b in cases:
        differences = {m: pair_difference(a, b, m) for m in metrics}
        table.append({"issue": issue, "criterion": criterion, "pair": pair, "differences_points": differences,
                      "holds": all(d["more_than_two_std"] for d in differences.values())})  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "criteria.json"))
    args = parser.parse_args()
    table = criteria()
    names = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AU-PRO"}
    print("| issue | criterion | closest measured pair (three seeds) | mean difference, points (bar: 2 std) | holds |")
    print("|---|---|---|---|---|")
    for row in table:
        cells = "; ".join(f"{names[m]} {d['mean']:+.1f} ({d['two_std_larger_row']:.1f})"
                          for m, d in row["differences_points"].items())  # fmt: skip
        print(f"| {row['issue']} | {row['criterion']} | {row['pair']} | {cells} | {'yes' if row['holds'] else 'no'} |")
    Path(args.out).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
