"""The README's Results tables are generated from committed JSON: a table that differs from its JSON fails here.

`python -m benchmarks.results_tables --write` regenerates them after a benchmark run.
"""

from __future__ import annotations

import json
import re

from benchmarks.results_tables import GENERATORS, README, RESULTS, blocks, regenerate


def test_every_generated_block_matches_its_json() -> None:
    text = README.read_text()
    found = blocks(text)
    assert set(found) == set(GENERATORS), "every generator has exactly one block in README.md"
    for name, body in found.items():
        assert body == GENERATORS[name](), f"README block {name!r} differs from its JSON; run the generator"
    assert regenerate(text) == text


def test_a_changed_figure_is_caught() -> None:
    text = README.read_text()
    body = blocks(text)["headline-test"]
    figure = re.search(r"\d\.\d{3}", body)
    assert figure is not None
    bumped = f"{float(figure.group()) + 0.001:.3f}"
    edited = text.replace(body, body.replace(figure.group(), bumped, 1))
    assert blocks(edited)["headline-test"] != GENERATORS["headline-test"]()


def test_headline_reports_test_figures_only_for_the_recipe_validation_chose() -> None:
    doc = json.loads((RESULTS / "headline.json").read_text())
    trained = {name: row for name, row in doc["validation"].items() if row["status"] == "trained"}
    best = max(trained, key=lambda name: trained[name]["best_val_map_at_r"])
    assert doc["chosen"] == best
    for row in trained.values():  # every row records its full training config
        assert {"shape", "lr", "batch_size", "sampler", "max_minutes", "loss"} <= set(row["recipe"])
    assert all("test" not in row for row in doc["validation"].values())
    assert set(doc["test"]) >= {"all labels", "pneumonia merged"}
