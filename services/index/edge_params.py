"""IndexTuning -> qdrant-edge's shard config (the engine's own classes, KB-sized), and the payload indexes a shard
gets; search parameters come from IndexTuning.search_plan through services.index.translate, as for the server."""

from __future__ import annotations

import qdrant_edge as qe

from services.index.tuning import ENGINE_EF_CONSTRUCT, ENGINE_FULL_SCAN_KB, ENGINE_HNSW_M, IndexTuning, points_to_kb


def edge_optimizers(tuning: IndexTuning, dim: int, threshold_kb: int | None) -> qe.EdgeOptimizersConfig | None:
    """The optimizer config for a `dim`-d shard, or None to keep the shard's own (`threshold_kb`: a KB
    threshold given directly, used when the tuning sets none)."""
    threshold = points_to_kb(tuning.threshold_points, dim) if tuning.threshold_points else threshold_kb
    segment = points_to_kb(tuning.segment_points, dim) if tuning.segment_points else None
    if threshold is None and segment is None and tuning.merge_segments is None:
        return None
    return qe.EdgeOptimizersConfig(
        indexing_threshold=threshold, max_segment_size=segment, default_segment_number=tuning.merge_segments
    )


def edge_hnsw(tuning: IndexTuning) -> qe.HnswIndexConfig | None:
    """The HNSW build config, or None for the engine default."""
    if not tuning.sets_graph:
        return None
    return qe.HnswIndexConfig(
        m=tuning.hnsw_m or ENGINE_HNSW_M,
        ef_construct=tuning.hnsw_ef_construct or ENGINE_EF_CONSTRUCT,
        full_scan_threshold=ENGINE_FULL_SCAN_KB,
        max_indexing_threads=tuning.index_threads,
        payload_m=tuning.hnsw_payload_m,
    )


def edge_config(
    tuning: IndexTuning, dim: int | None, threshold_kb: int | None, *, creating: bool = False
) -> qe.EdgeConfig:
    """A shard config. The graph parameters go in at creation only: a changed HNSW config on load makes the
    engine rebuild every segment at the next optimize() (measured), a full rebuild no refresh should trigger."""
    optimizers = None if dim is None else edge_optimizers(tuning, dim, threshold_kb)
    vectors = None if dim is None else qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
    return qe.EdgeConfig(vectors=vectors, optimizers=optimizers, hnsw_config=edge_hnsw(tuning) if creating else None)


_SCHEMA = {"keyword": qe.PayloadSchemaType.Keyword, "integer": qe.PayloadSchemaType.Integer}


def index_fields(shard: qe.EdgeShard, fields: dict[str, str]) -> None:
    """Create these payload indexes (name -> "keyword" or "integer") on `shard` and make them durable."""
    for key, kind in fields.items():
        shard.update(qe.UpdateOperation.create_field_index(key, _SCHEMA[kind]))
    if fields:
        shard.flush()
