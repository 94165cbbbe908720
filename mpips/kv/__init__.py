"""kv: the worker and server sides of the key-value API, storage and handles.

Tables are declared with :class:`mpips.Table` (the app contract, below the
postoffice); this package serves them.
"""

from .handles import BUILTIN, SGD, AdaGrad, Add, Assign, Handle, UserHandle
from .store import SortedStore

__all__ = ["BUILTIN", "SGD", "AdaGrad", "Add", "Assign", "Handle", "SortedStore", "UserHandle"]
