"""Ingest (find, decode, encode, upsert as overlapped stages) and query (image -> ranked hits)."""

from services.pipeline.ingest import FileError, IngestOptions, Ingestor, IngestReport
from services.pipeline.query import QueryOptions, QueryResult, hits_to_json, search_bytes, search_file
from services.pipeline.runtime import Runtime
from services.pipeline.sources import IngestItem, Unfound, build_items, walk_files

__all__ = [
    "FileError",
    "IngestItem",
    "IngestOptions",
    "IngestReport",
    "Ingestor",
    "QueryOptions",
    "QueryResult",
    "Runtime",
    "Unfound",
    "build_items",
    "hits_to_json",
    "search_bytes",
    "search_file",
    "walk_files",
]
