"""Per defect type, seed by seed: image AUROC of benchmark variants against a reference model.

    python bench/per_type.py --results RUN/results.json --reference score_factors.json --side a \
        [--out bench/results/per_type.json]

`--results` is a `defectmap benchmark` results.json: every run in it carries its image AUROC per defect type
(`defect_types`). The reference's per-type AUROCs come from a bench/score_factors.py file, one side (a or b) of each
of its hard_cases files; each file's seed is read from that side's checkpoint path (`.../seed<N>/model.ckpt`).
Runs and reference pair up by seed, so both must have been scored on the same test images (the same hold-outs).
Differences are in AUROC points (x 100).
"""

import argparse
import json
import re
import sys
from pathlib import Path


def variant_label(run: dict) -> str:
    return run.get("variant") or run["method"]


def reference_by_seed(factors: dict, side: str) -> dict[int, dict[str, float]]:
    by_seed = {}
    for entry in factors["files"]:
        found = re.search(r"seed(\d+)", entry[side])
        if not found:
            sys.exit(f"cannot tell the seed of {entry[side]}: expected a path with seed<N>")
        by_seed[int(found.group(1))] = entry[f"auroc_per_type_{side}"]
    return by_seed


def differences(runs: list[dict], reference: dict[int, dict[str, float]]) -> dict:
    """{variant: {defect: {"seeds", "per_seed" points, "mean"}}} for the seeds both sides have."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        if run["seed"] in reference and run.get("defect_types"):
            types = {defect: row["image_auroc"] for defect, row in run["defect_types"].items()}
            table.setdefault(variant_label(run), {})[run["seed"]] = types
    result = {}
    for variant, by_seed in table.items():
        seeds = sorted(by_seed)
        result[variant] = {}
        for defect in by_seed[seeds[0]]:
            per_seed = [round(100 * (by_seed[s][defect] - reference[s][defect]), 1) for s in seeds]
            mean = round(sum(per_seed) / len(seeds), 1)
            result[variant][defect] = {"seeds": seeds, "per_seed": per_seed, "mean": mean}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a benchmark's results.json")
    parser.add_argument("--reference", type=Path, required=True, help="a bench/score_factors.py JSON")
    parser.add_argument("--side", choices=("a", "b"), default="a", help="which model of the reference files")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for path in (args.results, args.reference):
        if not path.is_file():
            parser.error(f"no such file: {path}")
    reference = reference_by_seed(json.loads(args.reference.read_text()), args.side)
    result = differences(json.loads(args.results.read_text())["runs"], reference)
    if not result:
        sys.exit("no run shares a seed with the reference, or the runs carry no defect_types")
    for variant, types in result.items():
        print(variant)
        for defect, row in types.items():
            print(f"  {defect:10s} per seed {row['per_seed']}  mean {row['mean']:+.1f}")
    if args.out:
        command = "python bench/per_type.py " + " ".join(sys.argv[1:])
        args.out.write_text(json.dumps({"command": command, "reference_side": args.side, "differences_points": result},
                                       indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
