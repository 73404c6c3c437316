"""Index: choose (select.py, pure), build (build.py, streamed from Parquet) and score (score.py) FAISS indexes.

The three steps are separate so each can be tested alone; build_index runs them in order and saves the report.
"""

from .build import IndexReport, build_index, load_index
from .score import latency_ms, recall_at_k, tune_search_param
from .select import IndexChoice, candidate_indexes, parse_factory, select_index

__all__ = ["IndexChoice", "IndexReport", "build_index", "candidate_indexes", "latency_ms", "load_index",
           "parse_factory", "recall_at_k", "select_index", "tune_search_param"]
