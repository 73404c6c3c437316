"""Index: choose (select.py, pure), build (build.py), update (update.py) and score (score.py) FAISS indexes.

The steps are separate so each can be tested alone; files.py owns their files, ids.py the FAISS id = row
rule, bm25.py the lexical index built beside FAISS.
"""

from .build import IndexReport, build_index
from .files import load_bm25, load_index, read_index_rows
from .score import latency_ms, recall_at_k, tune_search_param
from .select import IndexChoice, candidate_indexes, parse_factory, select_index
from .update import update_index

__all__ = ["IndexChoice", "IndexReport", "build_index", "candidate_indexes", "latency_ms", "load_bm25", "load_index",
           "parse_factory", "read_index_rows", "recall_at_k", "select_index", "tune_search_param", "update_index"]
