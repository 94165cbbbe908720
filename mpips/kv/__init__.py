"""kv: the worker and server sides of the key-value API, and storage.

Tables are declared with :class:`mpips.Table` (the app contract, below the
postoffice) and updated by the handles of :mod:`mpips.handles` (re-exported
here); this package serves them.
"""

from ..handles import BUILTIN, SGD, AdaGrad, Add, Assign, Handle, UserHandle
from .store import SortedStore

__all__ = ["BUILTIN", "SGD", "AdaGrad", "Add", "Assign", "Handle", "SortedStore", "UserHandle"]
