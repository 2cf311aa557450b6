"""docs/scaling.md's "One graph per label" section against benchmarks/results/store_partitions.json: every row of
its table and every figure of its prose, rebuilt from the JSON (tests/scaling_partitions_doc.py)."""

from __future__ import annotations

from tests.scaling_doc import _cites, _doc, _plain, _section
from tests.scaling_partitions_doc import partition_figures, partition_runs, store_layout_figures

HEADING = "One graph per label (issue 18: the layout of new embedded collections)"
PROSE = (
    "compare both layouts in one run (`{RUN_100K}`)",
    "The 1M partitioned row is run `{RUN_1M}`, at load {LOADS_1M}",
    "run `{POLICY_1M}` of the section above",
    "label filter: met ({LABEL_1M}), where today's exact search takes {SINGLE_LABEL_1M} ms",
    "selective filter: met ({SEL_1M})",
    "unfiltered: {NONE_VERDICT} ({NONE_1M}; {NONE_1M_EF64} at ef 64). Today's one graph takes {SINGLE_NONE_1M} ms",
    "the refreshes took {REFRESH_100K_PARTS} s in all (hard and real data), against {REFRESH_100K_SINGLE} s",
    "At 1M they took {REFRESH_1M_TOTAL} s in all, the longest {REFRESH_1M_MAX} s",
    "({UPSERT_100K_PARTS} against {UPSERT_100K_SINGLE} points/s)",
    "At 100k: {DISK_100K_PARTS} MB against {DISK_100K_SINGLE} MB",
    "At 1M: {DISK_1M_PARTS} MB",
)
STORE_PROSE = (
    "100k, both layouts: run `{STORE_100K}`",
    "1M, one graph per label: run `{STORE_1M}`",
    "hard 1M run `{HARD_1M}` of the first table",
    "Load {STORE_LOADS}",
    "unfiltered {STORE_NONE_VERDICT} ({STORE_NONE_1M}); label filter {STORE_LABEL_VERDICT} ({STORE_LABEL_1M}); "
    "selective filter {STORE_SEL_VERDICT} ({STORE_SEL_1M})",
    "{STORE_NONE_100K_RATIO}x the one graph's p50 at 100k",
    "Upserts run at {STORE_UPSERT_RATIO}x the one graph's rate",
)


def test_the_partition_table_and_prose_come_from_the_json() -> None:
    figures = partition_figures()
    section = _section(HEADING)
    _cites("store_partitions.json")
    for row in figures["TABLE_ROWS"].splitlines():
        assert row in section, row
    prose = _plain(section)
    for template in PROSE:
        assert template.format(**figures) in prose, template


def test_the_section_says_the_targets_as_the_json_gives_them() -> None:
    """A "met" in the prose must be a p50 within 10 ms at recall >= 0.99 in the JSON, and the runs it names exist."""
    figures = partition_figures()
    for key in ("LABEL_1M", "SEL_1M"):
        p50, recall = (float(x.rstrip(" ms")) for x in figures[key].split(", "))
        assert p50 <= 10 and recall >= 0.99, key
    assert {figures["RUN_100K"], figures["RUN_1M"]} <= set(partition_runs())
    assert "store_partitions.py" in _doc()


def test_the_store_layout_tables_and_prose_come_from_the_json() -> None:
    figures = store_layout_figures()
    section = _section(HEADING)
    for row in [*figures["STORE_TABLE_ROWS"].splitlines(), *figures["STORE_BUILD_ROWS"].splitlines()]:
        assert row in section, row
    prose = _plain(section)
    for template in STORE_PROSE:
        assert template.format(**figures) in prose, template
    assert {figures["STORE_100K"], figures["STORE_1M"]} <= set(partition_runs())


def test_the_listing_time_the_section_quotes_is_the_cli_benchmarks() -> None:
    from tests.scaling_doc import _json

    rows = _json("cli_startup.json")["rows"]
    listed = rows["cxr collections"]["p50_s"]
    assert f"`cxr collections` stayed at {listed:.2f} s" in _plain(_section(HEADING))
    assert rows["cxr collections"]["target_met"]
