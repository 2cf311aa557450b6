"""IndexTuning -> a Qdrant server collection's config (qdrant-client's classes, KB-sized), as edge_params does
for the embedded store."""

from __future__ import annotations

from qdrant_client import models as qm

from services.index.tuning import IndexTuning, points_to_kb


def server_hnsw(tuning: IndexTuning) -> qm.HnswConfigDiff | None:
    """The HNSW build config of a new collection, or None for the server default."""
    if not tuning.sets_graph:
        return None
    return qm.HnswConfigDiff(
        m=tuning.hnsw_m,
        ef_construct=tuning.hnsw_ef_construct,
        payload_m=tuning.hnsw_payload_m,
        max_indexing_threads=tuning.index_threads,
    )


def server_optimizers(tuning: IndexTuning, dim: int) -> qm.OptimizersConfigDiff | None:
    """The optimizer config of a new `dim`-d collection, or None for the server default."""
    if not (tuning.threshold_points or tuning.segment_points or tuning.merge_segments is not None):
        return None
    return qm.OptimizersConfigDiff(
        indexing_threshold=points_to_kb(tuning.threshold_points, dim) if tuning.threshold_points else None,
        max_segment_size=points_to_kb(tuning.segment_points, dim) if tuning.segment_points else None,
        default_segment_number=tuning.merge_segments,
    )
