"""Figures in the README come from committed benchmark JSON: each row checked here is rebuilt from its file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scaling_doc import policy_figures
from tests.scaling_partitions_doc import partition_figures, store_layout_figures

REPO = Path(__file__).resolve().parents[1]


def _row(script: str) -> str:
    readme = (REPO / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith(f"| `{script}` |")]
    return line


def test_the_audit_cost_row_matches_its_json() -> None:
    data = json.loads((REPO / "benchmarks" / "results" / "audit_cost.json").read_text())
    row = _row("benchmarks/audit_cost.py")
    on, off = data["cases"]["on"], data["cases"]["off"]
    for figure in (
        f"{data['indexed']:,} cxr-public images",
        f"{on['n']} searches each",
        f"p50 {on['p50_ms']} ms on vs {off['p50_ms']} ms off (x{data['p50_ratio_on_over_off']})",
        f"p95 {on['p95_ms']} vs {off['p95_ms']} ms (x{data['p95_ratio_on_over_off']})",
        f"one record {data['one_record_ms']} ms",
    ):
        assert figure in row, figure
    assert data["met"] == (data["p50_ratio_on_over_off"] <= 1.05) and "met, narrowly" in row


def _json(name: str) -> dict:
    return json.loads((REPO / "benchmarks" / "results" / name).read_text())


def _span(values: list[float], fmt: str) -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def _check(row: str, figures: list[str]) -> None:
    for figure in figures:
        assert figure in row, figure


def test_the_receiver_row_matches_its_json() -> None:
    """The latency quoted is the trained default checkpoint's on the service's default back end."""
    from services.config import Settings

    data = _json("receiver.json")
    rate, lat, model = data["instances_per_s"], data["cstore_to_searchable"], data["model"]
    load = data["load_avg_1_5_15min"]
    assert data["backend"] == Settings.model_fields["inference_backend"].default
    assert model["shape"] == "hybrid-lite0" and model["id"].startswith("default-")
    _check(
        _row("benchmarks/receiver.py"),
        [
            f"{data['n_per_row']} DX (~{data['instance_kb_mean']} kB) per row",
            f"load {load['start'][0]} at start, {load['end'][0]} at end",
            f"floor {rate['durability floor (intake alone, 1 thread)']}/s",
            f"1 association {rate['receiver, 1 association(s)']}/s",
            f"4: {rate['receiver, 4 association(s)']}/s, 8: {rate['receiver, 8 association(s)']}/s",
            f"Orthanc pushing to cxr {rate['Orthanc push to cxr, 1 association']}/s",
            f"to a second Orthanc {rate['baseline: Orthanc push to a 2nd Orthanc']}/s",
            f"trained {model['shape']} ({model['image_size']} px) on {data['backend']}, the default back end",
            f"p50 {lat['p50_s']} s, p95 {lat['p95_s']} s, max {lat['max_s']} s",
            f"({lat['n']} instances {lat['gap_s']} s apart",
        ],
    )


def _store_scale_1m() -> tuple[dict, dict]:
    """The default beam's rows at 1M (ef 256): hard and the second real-like run, as docs/scaling.md uses them."""
    runs = {r["id"]: r for r in _json("store_scale.json")["runs"]}
    out = []
    for run in ("20261202-114009-2165", "20261202-125345-7766"):
        (res,) = [x for x in runs[run]["results"] if x["points"] == 1_000_000]
        (config,) = res["configs"]
        out.append({(x["ef"], x["acorn"], x["kind"]): x for x in config["search"]} | {"numpy": res["numpy_exact"]})
    return out[0], out[1]


def test_the_store_scale_row_and_the_scale_paragraph_match_their_json() -> None:
    hard, real = _store_scale_1m()
    unfiltered = [hard[(256, 0.0, "none")], real[(256, 0.0, "none")]]
    p50 = _span([x["p50_ms"] for x in unfiltered], ".2f")
    recall = _span([x["recall"] for x in unfiltered], ".3f")
    selective = [by[(256, a, "selective")]["p50_ms"] for by in (hard, real) for a in (0.0, 0.4)]
    label = f"{hard[(256, 0.4, 'label')]['recall']:.3f} (hard) / {real[(256, 0.4, 'label')]['recall']:.3f}"
    _check(
        _row("benchmarks/store_scale.py"),
        [
            f"unfiltered {p50} ms at {recall}",
            f"selective filter {_span(selective, '.1f')} ms (target 10 ms missed)",
            f"label filter with ACORN {label}",
        ],
    )
    readme = (REPO / "README.md").read_text()
    (scale,) = [x for x in readme.splitlines() if x.startswith("**Scale**")]
    bacterial = real[(256, 0.4, "label")]["recall_by_label"]["pneumonia_bacterial"]
    api = _json("api_search.json")["cases"]
    policy = policy_figures()
    _check(
        scale,
        [
            f"(ef 256) takes {p50} ms p50 at recall@10 {recall}",
            f"(numpy exact: {_span([hard['numpy']['none']['p50_ms'], real['numpy']['none']['p50_ms']], '.1f')} ms)",
            f"reaches {hard[(256, 0.4, 'label')]['recall']:.3f} on the hard synthetic case",
            f"but {real[(256, 0.4, 'label')]['recall']:.3f} on the trained model's vectors",
            f"pneumonia_bacterial ({bacterial:.3f})",
            f"{api['unfiltered']['best_round']['api']['p50_ms']:.1f} ms p50 unfiltered",
            f"{api['label filter']['best_round']['api']['p50_ms']:.1f} ms with a label filter",
            f"at 1M, {policy['BACT_EXACT']} ms for the largest label, {policy['BACT_POINTS']} points",
        ],
    )
    emulated, store = partition_figures(), store_layout_figures()
    _check(
        scale,
        [
            f"at 1M, {emulated['LABEL_1M']} on the real-like data and {store['STORE_LABEL_1M']} on the hard data",
            f"against {emulated['SINGLE_LABEL_1M']} ms exact",
            f"unfiltered searches visit every graph, {emulated['NONE_1M']} and {store['STORE_NONE_1M']}",
        ],
    )


def test_the_api_search_row_matches_its_json() -> None:
    data = _json("api_search.json")
    best = {case: v["best_round"] for case, v in data["cases"].items()}
    dicom = [b["api"]["dicom_p50_ms"] for b in best.values()]
    _check(
        _row("benchmarks/api_search.py"),
        [
            f"load {max(data['load_avg_1min_at_round_start']):.1f}",
            f"p50 {best['unfiltered']['api']['p50_ms']:.1f} ms unfiltered",
            f"(in process {best['unfiltered']['inline']['p50_ms']:.1f})",
            f"{best['label filter']['api']['p50_ms']:.1f} label filter",
            f"{best['one per patient']['api']['p50_ms']:.1f} one per patient",
            f"DICOM CRs {round(min(dicom), -1):.0f}-{round(max(dicom), -1):.0f} ms",
        ],
    )


def test_the_queue_and_ingest_rows_match_their_json() -> None:
    q = _json("queue.json")
    rate, ratio = q["images_per_s"], q["ratios"]
    decode = [r["decode"] for r in q["inline_stage_seconds"]]
    stages = [sum(r.values()) for r in q["inline_stage_seconds"]]
    _check(
        _row("benchmarks/queue.py"),
        [
            f"load {_span(q['load_avg_1min_at_round_start'], '.1f')} on 2 cores",
            f"encoder {rate['encoder alone']:.0f} img/s",
            f"inline {rate['inline cxr index']:.0f} ({ratio['inline / encoder']:.2f}x;",
            f"same-round ratios {_span(q['ratios_same_round']['inline / encoder'], '.2f')})",
            f"queue x1 {rate['queue, 1 embed process']:.0f} ({ratio['queue x1 / inline']:.2f}x of inline)",
            f"x2 {rate['queue, 2 embed processes']:.0f}",
            f"decode ({_span(decode, '.1f')} s of {_span(stages, '.1f')} s of stage time)",
        ],
    )
    rows = _json("ingest_throughput.json")["rows"]
    enc = rows["encode only (model ceiling)"]
    over, inline = rows["pipeline, decode overlapped (2 threads)"], rows["pipeline, decode inline"]
    _check(
        _row("benchmarks/ingest_throughput.py"),
        [
            f"encoder {enc:.0f} img/s",
            f"pipeline {over:.0f} img/s with decoding overlapped ({over / enc:.2f}x)",
            f"{inline:.0f} inline ({inline / enc:.2f}x)",
            f"decoding alone runs at {rows['decode only, 1 thread']:.0f} img/s",
        ],
    )


def test_the_encoder_augment_and_train_step_rows_match_their_json() -> None:
    e = _json("encoder_speed.json")
    by = {r["backend"]: r for r in e["rows"]}
    ov, bf, i8 = by["openvino"], by["openvino-bf16"], by["int8-dynamic"]
    assert e["fastest_agreeing"] == "openvino" and not bf["agrees"] and not i8["agrees"]
    _check(
        _row("benchmarks/encoder_speed.py"),
        [
            f"{e['threads']} threads, load {e['load_avg']:.1f}",
            f"eager fp32 {by['eager-fp32']['img_s']:.0f}, eager bf16 {by['eager-bf16']['img_s']:.0f}",
            f"compile {by['compile-bf16']['img_s']:.0f}, ONNX Runtime {by['onnxruntime']['img_s']:.0f}",
            f"OpenVINO fp32 {ov['img_s']:.0f} img/s = {ov['vs_eager_bf16']:.2f}x eager bf16",
            f"OpenVINO bf16 {bf['img_s']:.0f}",
            f"(cosine {bf['cosine_min']:.2f} / {i8['cosine_min']:.3f}, top-10 {bf['top10_overlap']:.2f}"
            f" / {i8['top10_overlap']:.2f})",
            f"MFU of OpenVINO fp32 {ov['mfu']} of the bf16 peak",
        ],
    )
    a = _json("augment_speed.json")
    rows = a["rows"]
    _check(
        _row("benchmarks/augment_speed.py"),
        [
            f"{a['threads']} thread: {rows['augment (whole pipeline)']['best_s'] * 1e3:.1f} ms per batch"
            f" (best of {a['repeats']})",
            f"grid {rows['separable grid']['best_s'] * 1e3:.1f} ms vs"
            f" {rows['F.affine_grid (reference)']['best_s'] * 1e3:.1f} ms",
        ],
    )
    t = _json("train_step_overhead.json")
    med = t["median_s"]
    rounds = {loop: [sorted(r[loop])[len(r[loop]) // 2] for r in t["rounds"]] for loop in ("plain", "trainer_loop")}
    loop_minus_step = sorted(
        a - b for a, b in zip(t["steps_s"]["trainer_loop"], t["steps_s"]["trainer_step_s"], strict=True)
    )
    _check(
        _row("benchmarks/train_step_overhead.py"),
        [
            f"ratio {t['ratio_to_plain']['trainer_loop']:.2f} (medians {med['trainer_loop']:.2f} vs"
            f" {med['plain']:.2f} s/step)",
            f"round medians swung {_span(rounds['plain'], '.2f')} s (plain) and"
            f" {_span(rounds['trainer_loop'], '.2f')} s (Trainer)",
            f"a median {loop_minus_step[len(loop_minus_step) // 2] * 1e3:.1f} ms beyond",
        ],
    )


def test_decode_and_cli_startup_rows_come_from_their_json() -> None:
    from benchmarks.results_tables import cli_startup_row, decode_row

    readme = (REPO / "README.md").read_text()
    assert f"| {decode_row()} |" in readme
    assert f"| {cli_startup_row()} |" in readme


def upload_burst_figures() -> str:
    """The README's upload_burst row result, rebuilt from its JSON."""
    data = _json("upload_burst.json")
    rows = {r["label"]: r for r in data["rows"]}

    def answers(row: dict) -> str:
        counts = {s: row["statuses"].count(s) for s in row["statuses"]}
        return ", ".join(f"{n}x {s}" for s, n in sorted(counts.items()))

    search, preview, small = (rows[k] for k in ("searches, default ceiling", "previews, default ceiling",
                                                "searches, small ceiling"))  # fmt: skip
    upload, verdict = data["upload"], "met" if data["target_met"] else "missed"
    return (
        f"{upload['megapixels']} Mpx PNG of {upload['png_kb']} KB: "
        f"searches +{search['peak_over_resting_mb']:,.0f} MB over {search['resting_mb']:,.0f} MB resting "
        f"under the {search['ceiling_mb']:,} MB ceiling, {answers(search)}; "
        f"previews +{preview['peak_over_resting_mb']:,.0f} MB, {answers(preview)}; "
        f"under a {small['ceiling_mb']:,} MB ceiling +{small['peak_over_resting_mb']:,.0f} MB, {answers(small)}. "
        f"Target (under the ceiling, every request answered, server alive): {verdict}"
    )


def store_partitions_figures() -> str:
    """The README's store_partitions row result, rebuilt from its JSON (tests/scaling_partitions_doc.py)."""
    emulated, store = partition_figures(), store_layout_figures()
    return (
        f"at 1M, one graph per label, hard data (the store) / real-like (emulated): label filter "
        f"{store['STORE_LABEL_1M']} / {emulated['LABEL_1M']}, "
        f"selective {store['STORE_SEL_1M']} / {emulated['SEL_1M']}, "
        f"unfiltered {store['STORE_NONE_1M']} / {emulated['NONE_1M']} (one graph: {emulated['SINGLE_LABEL_1M']} ms "
        f"exact for the label filter, {emulated['SINGLE_NONE_1M']} ms unfiltered)"
    )


def test_the_store_partitions_and_upload_burst_rows_match_their_json() -> None:
    assert store_partitions_figures() in _row("benchmarks/store_partitions.py")
    assert upload_burst_figures() in _row("benchmarks/upload_burst.py")
