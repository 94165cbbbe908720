"""kv: the worker and server sides of the key-value API, storage and handles."""

from .handles import BUILTIN, SGD, AdaGrad, Add, Assign, Handle, UserHandle
from .store import SortedStore
from .table import Table

__all__ = ["BUILTIN", "SGD", "AdaGrad", "Add", "Assign", "Handle", "SortedStore", "Table",
           "UserHandle"]
