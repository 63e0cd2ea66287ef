"""Paired comparisons over seeds: differences by seed, their spread, and the two-standard-deviation verdict."""

import pytest

from defectmap.comparison import against_reference, markdown, pair_difference


def _row(values: dict[int, float], metric: str = "image_auroc") -> dict[int, dict[str, float]]:
    return {seed: {metric: value} for seed, value in values.items()}


def test_pair_difference_by_seed_with_the_larger_rows_spread_as_the_bar():
    a, b = _row({2: 0.94, 0: 0.90, 1: 0.92}), _row({0: 0.80, 1: 0.80, 2: 0.83})
    d = pair_difference(a, b, "image_auroc")
    assert d["seeds"] == [0, 1, 2] and d["per_seed"] == [10.0, 12.0, 11.0]
    assert d["mean"] == 11.0 and d["std"] == 1.0
    assert d["two_std_larger_row"] == 4.0  # a's std 0.02 beats b's 0.0173
    assert d["more_than_two_std"] is True
    behind = pair_difference(b, a, "image_auroc")
    assert behind["mean"] == -11.0 and behind["more_than_two_std"] is False
    close = pair_difference(_row({0: 0.90, 1: 0.95}), _row({0: 0.89, 1: 0.93}), "image_auroc")
    assert close["mean"] == 1.5 and close["two_std_larger_row"] == pytest.approx(7.1) and not close["more_than_two_std"]


def test_only_shared_seeds_are_paired_and_one_seed_has_no_verdict():
    d = pair_difference(_row({0: 0.9, 1: 0.8, 5: 0.1}), _row({1: 0.7, 0: 0.6}), "image_auroc")
    assert d["seeds"] == [0, 1] and d["per_seed"] == [30.0, 10.0]
    single = pair_difference(_row({0: 0.9}), _row({0: 0.6, 1: 0.7}), "image_auroc")
    assert single["per_seed"] == [30.0] and single["more_than_two_std"] is None
    with pytest.raises(ValueError, match="share no seed"):
        pair_difference(_row({0: 0.9}), _row({1: 0.9}), "image_auroc")


def test_every_later_model_against_the_first_per_category_and_the_table():
    def run(category, variant, seed, image, pixel):
        return {"category": category, "variant": variant, "seed": seed, "image_auroc": image, "pixel_auroc": pixel,
                "aupro": None, "pixel_ap": None}  # fmt: skip

    runs = [run("c", "ae", 0, 0.60, 0.60), run("c", "daad", 0, 0.70, 0.62), run("c", "pmb", 0, 0.50, 0.61),
            run("c", "ae", 1, 0.62, 0.60), run("c", "daad", 1, 0.71, 0.58), run("c", "pmb", 1, 0.52, 0.59),
            run("d", "pmb", 0, 0.9, 0.9)]  # fmt: skip
    comparisons = against_reference(runs)
    pairs = [(c["category"], c["model"], c["reference"]) for c in comparisons]
    assert pairs == [("c", "daad", "ae"), ("c", "pmb", "ae")]
    daad = comparisons[0]
    assert daad["seeds"] == [0, 1] and daad["image_auroc"]["per_seed"] == [10.0, 9.0]
    assert daad["image_auroc"]["more_than_two_std"] and not daad["pixel_auroc"]["more_than_two_std"]
    assert "aupro" not in daad  # no masks, no pixel metrics: left out, not compared as zeros
    lines = markdown(comparisons, "c")
    assert lines[0].startswith("Against ae, paired by seed")
    assert lines[4] == "| daad | 2 | +9.5 ± 0.7 * | +0.0 ± 2.8 | n/a | n/a |"
    assert lines[5] == "| pmb | 2 | -10.0 ± 0.0 | +0.0 ± 1.4 | n/a | n/a |"
    assert markdown(comparisons, "d") == []  # one model: nothing to compare
