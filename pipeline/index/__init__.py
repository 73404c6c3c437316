"""Index: choose (select.py), build and tune (build.py) FAISS indexes over snapshot vectors."""

from .build import IndexReport, build_index, load_index
from .select import IndexChoice, select_index

__all__ = ["IndexChoice", "IndexReport", "build_index", "load_index", "select_index"]
