"""Figures in docs/scaling.md come from committed benchmark JSON: each table and claim names the file it comes from,
and every figure checked here is rebuilt from that file and must appear in the page as written."""

from __future__ import annotations

import re

import pytest

from tests.scaling_doc import (
    EFC_GRID,
    HARD_1M,
    HARD_100K,
    KINDS,
    ONE_M,
    REAL_1M,
    REAL_FIRST,
    REAL_NO_INDEX,
    RESULTS,
    TINY_GRID,
    _cites,
    _config,
    _doc,
    _json,
    _plain,
    _result,
    _runs,
    _search,
    _section,
    _tables,
    at,
    cell,
    ms,
    policy_figures,
    span,
)
from tests.scaling_partitions_doc import partition_runs


def test_every_table_names_its_json_and_every_cited_json_exists() -> None:
    lines = _doc().splitlines()
    starts = [i for i, x in enumerate(lines) if x.startswith("|") and not lines[i - 1].startswith("|")]
    assert len(starts) == 13
    for i in starts:
        paragraph: list[str] = []
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        while j >= 0 and lines[j].strip() and not lines[j].startswith("|"):
            paragraph.append(lines[j])
            j -= 1
        assert "benchmarks/results/" in " ".join(paragraph), f"the table at line {i + 1} names no JSON"
    cited = set(re.findall(r"benchmarks/results/([\w.]+\.json)", _doc()))
    assert cited >= {"store_scale.json", "api_search.json", "queue.json", "receiver.json", "serve_memory.json"}
    for name in cited:
        assert (RESULTS / name).is_file(), name
    for run in re.findall(r"`(\d{8}-\d{6}-\d+)`", _doc()):
        assert run in _runs() or run in partition_runs(), run


def _check_search_table(heading: str, points: int, source: dict[tuple[str, str], str]) -> None:
    """Each row of the table under `heading` is rebuilt from the run `source[(data, search kind)]` names."""
    text = _section(heading)
    for run in set(source.values()):
        assert f"`{run}`" in text, run
    rows = _tables(text)[0]
    assert len(rows) >= 9
    for data, search, ef, acorn, *cells in rows:
        if search.startswith("numpy exact"):
            ex = _result(source[(data, "numpy")], data, points)["numpy_exact"]
            expected = [cell(ex[k]) for k in KINDS]
        elif search == "engine, exact filtered":
            ex = _config(source[(data, "exact")], data, points)["exact_filtered"]
            expected = ["-", cell(ex["label"]), cell(ex["selective"])]
        else:
            assert search == "HNSW m=16", search
            by = _search(source[(data, "hnsw")], data, points)
            a = 0.0 if acorn == "off" else float(acorn)
            unfiltered = "=" if cells[0] == "=" and a else cell(by[(int(ef), 0.0, "none")])
            expected = [unfiltered, cell(by[(int(ef), a, "label")]), cell(by[(int(ef), a, "selective")])]
        assert cells == expected, (data, search, ef, acorn)


def test_the_1m_search_table() -> None:
    for run, data in ((HARD_1M, "hard"), (REAL_1M, "real")):
        s = _runs()[run]["settings"]
        assert (s["segment"], s["grid"], _result(run, data, 1_000_000)["dim"]) == (200_000, "16x100", 192)
    _check_search_table(
        ONE_M,
        1_000_000,
        {("hard", k): HARD_1M for k in ("numpy", "hnsw")} | {("real", k): REAL_1M for k in ("numpy", "exact", "hnsw")},
    )


def test_the_100k_search_table() -> None:
    _check_search_table(
        "Results at 100k points",
        100_000,
        {("real", "numpy"): REAL_FIRST, ("real", "hnsw"): REAL_FIRST, ("real", "exact"): REAL_NO_INDEX}
        | {("hard", k): HARD_100K for k in ("numpy", "hnsw")},
    )
    assert _runs()[HARD_100K]["settings"]["acorns"] == [0.0, 0.5]  # the page's hard rows say ACORN 0.5


def test_the_build_table() -> None:
    text = _section(ONE_M)
    (rows,) = _tables(text[text.index("Build and serving") : text.index("Against the target")])
    sources = {
        ("hard", "1M"): (HARD_1M, "hard", 1_000_000),
        ("real", "1M"): (REAL_1M, "real", 1_000_000),
        ("real (first run, loaded)", "1M"): (REAL_FIRST, "real", 1_000_000),
        ("real", "100k"): (REAL_FIRST, "real", 100_000),
    }
    assert {tuple(r[:2]) for r in rows} == set(sources)
    for row in rows:
        c = _config(*sources[(row[0], row[1])])
        b, s = c["build"], c["serve"]
        assert row[2:] == [
            f"{b['upsert_pts_per_s']:,.0f}",
            str(b["refreshes"]),
            f"{b['refresh_median_s']:.1f} / {b['refresh_max_s']:.1f}",
            f"{b['refresh_total_s']:,.0f} ({b['refresh_cpu_total_s']:,.0f})",
            str(b["segments"]),
            f"{s['rss_mb']:,.0f} MB",
            f"{s['disk_mb']:,.0f} MB",
            f"{s['open_s']:.1f} s",
        ], row[:2]


def _one_m() -> list[dict]:
    """The three 1M results with a writer's refreshes: hard, real, and the loaded first real run."""
    return [
        _config(HARD_1M, "hard", 1_000_000),
        _config(REAL_1M, "real", 1_000_000),
        _config(REAL_FIRST, "real", 1_000_000),
    ]


def test_the_1m_claims() -> None:
    hard, real = _search(HARD_1M, "hard", 1_000_000), _search(REAL_1M, "real", 1_000_000)
    hard_np = _result(HARD_1M, "hard", 1_000_000)["numpy_exact"]
    real_np = _result(REAL_1M, "real", 1_000_000)["numpy_exact"]
    exact = _config(REAL_1M, "real", 1_000_000)["exact_filtered"]
    hnsw = [(k, x) for k, x in list(hard.items()) + list(real.items())]
    doc = _plain(_doc())
    by_label = real[(256, 0.4, "label")]["recall_by_label"]
    no_acorn = {ef: real[(ef, 0.0, "label")]["recall_by_label"] for ef in (64, 128, 256, 512)}
    bacterial = [x["recall_by_label"]["pneumonia_bacterial"] for (_, _, kind), x in real.items() if kind == "label"]
    loads = lambda run: [x["load"] for x in _config(run, "real", 1_000_000)["search"]]  # noqa: E731
    figures = [
        f"ef=128, {ms(hard[(128, 0.0, 'none')]['p50_ms'])} ms, {hard[(128, 0.0, 'none')]['recall']:.3f}",
        f"the default: {ms(hard[(256, 0.0, 'none')]['p50_ms'])} ms, {hard[(256, 0.0, 'none')]['recall']:.3f}",
        f"{hard_np['none']['p50_ms'] / hard[(128, 0.0, 'none')]['p50_ms']:.0f}x faster than exact"
        f" ({ms(hard_np['none']['p50_ms'])} ms)",
        "Real-like: ef=64-128, "
        + span([real[(ef, 0.0, "none")]["p50_ms"] for ef in (64, 128)], ".2f")
        + f" ms, {min(real[(ef, 0.0, 'none')]['recall'] for ef in (64, 128)):.3f}"
        + f" (ef=256: {ms(real[(256, 0.0, 'none')]['p50_ms'])} ms)",
        f"ef=512 and no ACORN ({at(hard[(512, 0.0, 'label')])})",
        f"ef=256 with ACORN ({at(hard[(256, 0.4, 'label')])})",
        "recall is " + span([x["recall"] for (_, _, k), x in real.items() if k == "label"], ".3f") + " at every ef",
        "pneumonia_bacterial is missed at every setting (" + span(bacterial, ".3f") + ")",
        f"1.000 at {ms(exact['label']['p50_ms'])} ms ({ms(exact['label']['cpu_p50_ms'])} ms of CPU)",
        "latency not (" + span([x["p50_ms"] for (_, _, k), x in hnsw if k == "selective"], ".1f") + " ms p50",
        "the " + span([x["cpu_p50_ms"] for (_, _, k), x in hnsw if k == "selective"], ".1f") + " ms of CPU",
        "numpy takes " + span([hard_np["selective"]["p50_ms"], real_np["selective"]["p50_ms"]], ".2f") + " ms",
        f"Real-like rows: the second 1M run (load {span(loads(REAL_1M), '.1f')}",
        f"`{REAL_FIRST}` at load {span(loads(REAL_FIRST), '.1f')}",
        # per label, with ACORN at ef 256, and COVID-19 without ACORN
        f"normal {by_label['normal']:.3f}, viral {by_label['pneumonia_viral']:.3f},"
        f" COVID-19 {by_label['covid19']:.3f}, pneumonia_bacterial {by_label['pneumonia_bacterial']:.3f}",
        "without ACORN COVID-19 is missed too ("
        + ", ".join(f"{no_acorn[ef]['covid19']:.3f} at {'ef ' if ef == 64 else ''}{ef}" for ef in (64, 128, 256, 512))
        + ")",
        "COVID-19 falls short as well (" + span([no_acorn[ef]["covid19"] for ef in no_acorn], ".3f") + " over ef",
        "bacterial stays at " + span(bacterial, ".3f") + " in every setting",
        f"at 1M the exact path costs {ms(exact['label']['p50_ms'])} ms p50 for a label filter and"
        f" {ms(exact['selective']['p50_ms'])} ms for the selective one on 2 cores ({ms(exact['label']['cpu_p50_ms'])}"
        f" and {ms(exact['selective']['cpu_p50_ms'])} ms of CPU)",
        f"about {exact['label']['p50_ms'] - 10:.0f} ms over the target",
    ]
    for figure in figures:
        assert figure in doc, figure
    assert by_label["normal"] == by_label["pneumonia_viral"] == by_label["covid19"] == 1.0
    assert min(no_acorn[ef]["covid19"] for ef in no_acorn) < 0.95  # "COVID-19 is missed too" stays true


def test_the_100k_and_settings_claims() -> None:
    hard, real = _search(HARD_1M, "hard", 1_000_000), _search(REAL_1M, "real", 1_000_000)
    real_100k = _search(REAL_FIRST, "real", 100_000)
    exact_100k = _config(REAL_NO_INDEX, "real", 100_000)["exact_filtered"]["label"]["p50_ms"]
    hard_100k_loads = [x["load"] for x in _config(HARD_100K, "hard", 100_000)["search"]]
    tiny = {
        m: [x for x in c["search"] if x["kind"] == "label" and x["acorn"] == 0]
        for m, c in ((c["m"], c) for c in _result(TINY_GRID, "real", 100_000)["configs"])
    }
    efc = {
        (c["m"], c["ef_construct"]): c["build"]["refresh_total_s"]
        for c in _result(EFC_GRID, "real", 100_000)["configs"]
    }
    acorn_cost = [
        by[(ef, 0.4, "label")]["p50_ms"] / by[(ef, 0.0, "label")]["p50_ms"]
        for by in (hard, real)
        for ef in (64, 128, 256, 512)
    ]
    doc = _plain(_doc())
    figures = [
        f"load {span(hard_100k_loads, '.1f')}, with ACORN at 0.5",
        f"({span([x['recall'] for x in tiny[32]], '.3f')} against"
        f" {span([x['recall'] for x in tiny[16]], '.3f')} at m=16",
        f"({efc[(32, 200)]:.1f} s of refreshes against {efc[(16, 100)]:.1f} s at m=16 and"
        f" {efc[(32, 100)]:.1f} s at m=32",
        f"cost {efc[(32, 200)] / efc[(16, 100)]:.1f}-{efc[(32, 200)] / efc[(32, 100)]:.1f}x the refresh time",
        f"At 100k every filter is exact ({ms(exact_100k)} ms at 100k)",
        # the settings table
        f"unfiltered {hard[(256, 0.0, 'none')]['recall']:.3f} (hard) /"
        f" {real[(256, 0.0, 'none')]['recall']:.3f} (real) for "
        + span([hard[(256, 0.0, "none")]["p50_ms"], real[(256, 0.0, "none")]["p50_ms"]], ".2f")
        + " ms",
        f"with ACORN the hard label filter at {hard[(256, 0.4, 'label')]['recall']:.3f} for"
        f" {ms(hard[(256, 0.4, 'label')]['p50_ms'])} ms; 128 gives {hard[(128, 0.0, 'none')]['recall']:.3f}"
        f" unfiltered but {hard[(128, 0.4, 'label')]['recall']:.3f} filtered",
        f"{hard[(128, 0.0, 'label')]['recall']:.3f} -> {hard[(128, 0.4, 'label')]['recall']:.3f} at ef 128",
        f"ACORN costs {span(acorn_cost, '.1f')}x the latency at ef 64-512",
        f"recall 1.000 whatever the filter follows, {ms(exact_100k)} ms at 100k",
        f"refreshes stay under {max(c['build']['refresh_max_s'] for c in _one_m()):.1f} s at 1M",
        f"numpy scans 100k points in {ms(_result(REAL_FIRST, 'real', 100_000)['numpy_exact']['none']['p50_ms'])} ms",
        # the API section's pointers into the 100k table
        f"the {ms(real_100k[(128, 0.0, 'none')]['p50_ms'])}-{ms(exact_100k)} ms of the 100k table",
        f"256 adds {real_100k[(256, 0.0, 'none')]['p50_ms'] - real_100k[(128, 0.0, 'none')]['p50_ms']:.1f} ms to an"
        f" unfiltered search ({ms(real_100k[(128, 0.0, 'none')]['p50_ms'])} ->"
        f" {ms(real_100k[(256, 0.0, 'none')]['p50_ms'])} ms p50",
    ]
    for figure in figures:
        assert figure in doc, figure


def test_the_exact_policy_claims() -> None:
    """ "Exact by what the filter keeps": the per-label table, the estimate, the targets and the quantization lever."""
    f = policy_figures()
    raw, doc = _doc(), _plain(_doc())
    _cites("exact_filter_quantization.json")
    for row in f["TABLE_ROWS"].splitlines() + f["QUANT_ROWS"].splitlines():
        assert row in raw, row
    figures = [
        f"run `{f['RUN_ID']}`",
        f"load {f['LOADS']} while searching",
        f"{f['NUMPY_RATIO']}x slower than on 2 December ({f['NUMPY_NOW']} against {f['NUMPY_THEN']} ms",
        f"took {f['ESTIMATE_MS']} ms per lookup",
        f"it was {f['SEL_EST']} points against {f['SEL_TRUE']} ({f['SEL_RATIO']}x)",
        f"unfiltered: met ({f['UNF_AT']})",
        f"Exact gives 1.000 at {f['LABEL_EXACT']} ms p50 over the four labels ({f['BACT_EXACT']} ms for"
        " pneumonia_bacterial",
        f"HNSW with ACORN is faster, {f['LABEL_HNSW']}, but misses bacterial films ({f['BACT_HNSW']})",
        f"latency not ({f['SEL_EXACT']} ms exact, {f['SEL_HNSW']} ms through HNSW)",
        f"took {f['QSEL_PLAIN']} ms against {f['QLABEL_PLAIN']} ms for a label filter",
        f"took {f['QUANT_RANGE']} the plain one's time",
        f"about {f['PER_POINT']} ns of wall time per point kept",
        f"{f['BACT_EXACT']} ms at 1M for the largest label ({f['BACT_POINTS']} points)",
    ]
    for figure in figures:
        assert figure in doc, figure
    assert round(int(f["PER_POINT"]) * 500_000 / 1e6 / 10) * 10 == 40  # "about 40 ms"
    est = _config(f["RUN_ID"], "real", 1_000_000)["exact_filtered"]["matches_estimate"]
    assert all(e["estimate"] == e["true"] for k, e in est.items() if k.startswith("label="))  # "matched the true count"


def test_the_writer_and_ingestion_claims() -> None:
    builds = [c["build"] for c in _one_m()]
    cpu_ms = [b["refresh_cpu_total_s"] / 1e3 for b in builds]  # ms per point over 1M points
    rates = _json("queue.json")["images_per_s"]
    end_to_end = [rates["queue, 1 embed process"], rates["queue, 2 embed processes"]]
    per_core = [1e3 / x for x in cpu_ms]
    rx = _json("receiver.json")["instances_per_s"]
    doc = _plain(_doc())
    figures = [
        f"50 refreshes took {span([b['refresh_median_s'] for b in builds], '.1f')} s median and"
        f" {span([b['refresh_max_s'] for b in builds], '.1f')} s at most,"
        f" {span([b['refresh_total_s'] for b in builds], ',.0f')} s in all ({span(cpu_ms, '.2f')} ms of CPU per point",
        f"about {span([round(x, -1) for x in per_core], '.0f')} points/s of indexing per core",
        f"{span(end_to_end, '.0f')} img/s through the queue",
        f"the encoder alone {rates['encoder alone']:.0f})",
        f"Past about {round((min(per_core) / max(end_to_end) + max(per_core) / min(end_to_end)) / 2)} embedding",
        f"100M films at {span(end_to_end, '.0f')} img/s end to end per 2-core machine",
        f"is {span([1e8 / x / 3600 for x in end_to_end], '.0f')} machine-hours: 16 machines do it in"
        f" {span([1e8 / x / 3600 / 16 for x in end_to_end], '.1f')} h",
        f"one receiver took {rx['receiver, 8 association(s)']} instances/s over 8 associations here"
        f" ({rx['receiver, 4 association(s)']} over 4, {rx['receiver, 1 association(s)']} over 1;"
        " benchmarks/results/receiver.json)",
    ]
    for figure in figures:
        assert figure in doc, figure
    receiver = {k: v for k, v in rx.items() if k.startswith("receiver,")}
    assert max(receiver, key=receiver.get) == "receiver, 8 association(s)"  # "one receiver took" quotes the best


def test_the_api_table() -> None:
    data = _json("api_search.json")
    text = _section("The API end to end")
    _cites("api_search.json")
    (rows,) = _tables(text)
    names = {"unfiltered": "unfiltered", "label filter": "label filter (exact", "one per patient": "one per patient"}
    assert len(rows) == len(names)
    for case, prefix in names.items():
        (row,) = [r for r in rows if r[0].startswith(prefix)]
        best, overhead = data["cases"][case]["best_round"], data["cases"][case]["api_overhead_p50_ms"]
        api, inline = best["api"], best["inline"]
        assert row[1:] == [
            f"{api['p50_ms']:.1f} / {api['p95_ms']:.1f} ({api['dicom_p50_ms']:.0f})",
            f"{inline['p50_ms']:.1f} / {inline['p95_ms']:.1f} ({inline['dicom_p50_ms']:.0f})",
            f"{overhead:.1f} ms",
        ], case
    plain = _plain(text)
    n = data["query_files"]
    for figure in (
        f"JPEG queries are {n['jpeg']} cxr-public films",
        f"the DICOM column is {n['dicom']} of pydicom-data's",
        f"The DICOM queries are {n['dicom']} files",
        f"Load {span(data['load_avg_1min_at_round_start'], '.1f')}.",
    ):
        assert figure in plain, figure
    assert data["inference_backend"] == "openvino" and "default OpenVINO back end" in plain


def test_the_projection_table() -> None:
    configs = _one_m()
    dim = _result(HARD_1M, "hard", 1_000_000)["dim"]
    rss = [c["serve"]["rss_mb"] / 1e3 for c in configs]  # KB per point over 1M points
    kb = round(max(rss), 2)
    vec = dim * 4 / 1e3
    saved = round(dim * 3 / 1e3, 2)  # float32 -> int8
    q = kb - saved
    disk = round(max(c["serve"]["disk_mb"] for c in configs) / 1e3, 1)
    hours = [c["build"]["refresh_cpu_total_s"] / 3600 for c in configs]
    rates = _json("queue.json")["images_per_s"]
    end_to_end = [rates["queue, 1 embed process"], rates["queue, 2 embed processes"]]
    embed = [1e6 / x / 3600 for x in end_to_end]
    search_cpu = [
        _search(HARD_1M, "hard", 1_000_000)[(256, 0.0, "none")]["cpu_p50_ms"],
        _search(REAL_1M, "real", 1_000_000)[(256, 0.0, "none")]["cpu_p50_ms"],
    ]
    text = _section("Projections to 10M and 100M images")
    (rows,) = _tables(text)
    table = {r[0]: r[1:] for r in rows}
    assert table["raw vectors, 192-d float32"] == [f"{vec:.2f} GB", f"{vec * 10:.1f} GB", f"{vec * 100:.0f} GB"]
    assert table[f"RAM as stored here ({kb} KB/point)"] == [f"{kb} GB", f"{kb * 10:.1f} GB", f"{kb * 100:.0f} GB"]
    int8 = f"RAM with int8 scalar quantisation, float32 originals on disk for rescoring (-{saved} KB/point)"
    assert table[int8] == [f"{q:.1f} GB", f"{q * 10:.0f} GB", f"{q * 100:.0f} GB"]
    assert table[f"disk ({disk} KB/point)"] == [f"{disk} GB", f"{disk * 10:.0f} GB", f"{disk * 100:.0f} GB"]
    assert table["index CPU, all refreshes (one core)"] == [
        f"{span(hours, '.2f')} h",
        f"{span([h * 10 for h in hours], '.1f')} h",
        f"{span([h * 100 for h in hours], '.0f')} h",
    ]
    embedding = f"embedding end to end, 1 machine of 2 cores at {span(end_to_end, '.0f')} img/s (queue, OpenVINO)"
    assert table[embedding] == [
        f"{span(embed, '.1f')} h",
        f"{span([h * 10 for h in embed], '.1f')} h",
        f"{span([h * 100 for h in embed], '.0f')} h",
    ]
    plain = _plain(text)
    for figure in (
        f"({span(rss, '.2f')} KB of RSS and {disk} KB of disk per {dim}-d point",
        f"{span([h * 3600 / 1e3 for h in hours], '.2f')} ms of index CPU per point",
        f"{span(search_cpu, '.2f')} ms of search CPU per query at 1M unfiltered at ef 256",
        f"rate ({span(end_to_end, '.0f')} img/s per 2-core machine, benchmarks/results/queue.json)",
        f"(0.77 KB of the {kb})",
        f"about {25 * q:.0f} GB at the int8 row's {q:.2f} KB/point",
    ):
        assert figure in plain, figure
    assert _json("queue.json")["inference_backend"] == "openvino"


def test_the_data_section() -> None:
    real = _result(REAL_1M, "real", 1_000_000)
    shares = [v for k, v in real["shares"].items() if k.startswith("label=")]
    plain = _plain(_section("The data"))
    assert f"{min(shares):.0%}-{max(shares):.0%} of the points" in plain
    assert f"({real['shares']['selective']:.0%} of the points" in plain
    assert "mean pairwise cosine 0.37" in _runs()[REAL_1M]["model"] and "cosine, 0.37" in plain


@pytest.mark.parametrize("stale", ["206 instances/s", "424 img/s", "3 files", "66 machine-hours"])
def test_the_stale_figures_of_issue_17_are_gone(stale: str) -> None:
    assert stale not in _plain(_doc())


def test_the_server_memory_table() -> None:
    data = _json("serve_memory.json")
    text = _section("The server's memory")
    _cites("serve_memory.json")
    rows, allocator = _tables(text)
    n = data["requests"]
    by = {r["label"]: r for r in data["runs"]}
    assert [r[0] for r in rows] == [r["label"] for r in data["runs"]]
    for row in rows:
        r = by[row[0]]
        mb = [r[k]["vmrss_mb"] for k in ("ready", "idle_after_first_search", "after_first_explain", "after_100")]
        assert row[1:] == [
            *(f"{x:,.0f}" for x in mb),
            f"{r[f'after_{n}']['vmrss_mb']:,.0f}",
            f"{r['growth_100_to_n']:+.1%}",
            f"{r[f'after_{n}']['vmhwm_mb']:,.0f}",
        ], row[0]
    t, plain = data["targets"], _plain(text)
    verdict = {True: "met", False: "missed"}
    idle = {label: r["idle_after_first_search"]["vmrss_mb"] for label, r in by.items()}
    loads = [r["load_avg_1min"] for r in data["runs"]]
    for figure in (
        f"{t['idle_ratio']:.2f}x today's (target at most 0.7x: {verdict[t['idle_met']]})",
        f"from a cold cache {idle['this tree, cold cache'] / idle['today, cold cache']:.2f}x",
        f"{t['growth']:+.1%} from 100 to {n:,} requests (target within 10%: {verdict[t['growth_met']]})",
        f"today's {by['today']['growth_100_to_n']:+.1%} in this run",
        f"{data['store']['points']} points",
        f"Load {span(loads, '.1f')}.",
    ):
        assert figure in plain, figure
    # the allocator table: the same mix, one server per allocator setting
    other = _json("serve_memory_allocator.json")
    _cites("serve_memory_allocator.json")
    m = other["requests"]
    assert f"({m} requests; benchmarks/results/serve_memory_allocator.json)" in plain
    assert [
        [
            r["label"],
            f"{r['after_100']['vmrss_mb']:,.0f}",
            f"{r[f'after_{m}']['vmrss_mb']:,.0f}",
            f"{r['growth_100_to_n']:+.1%}",
            f"{r[f'after_{m}']['vmhwm_mb']:,.0f}",
        ]
        for r in other["runs"]
    ] == allocator
    assert all(r["tree"] == "this" for r in other["runs"])
