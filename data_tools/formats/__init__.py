"""Input formats, by name. Add one with :func:`register` (see ``base.py``)."""

from data_tools.formats import criteo, csvfmt, docword, libsvm, parquet  # noqa: F401  (registers)
from data_tools.formats.base import FORMATS, Block, ConvertOptions, InputFormat, register

__all__ = ["FORMATS", "Block", "ConvertOptions", "InputFormat", "register"]
