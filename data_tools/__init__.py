"""data_tools: turn exported data into mpips HDF5 partitions, and make synthetic data.

``python -m data_tools convert|synth|inspect|verify|bench --help``. The
partition format is described in :mod:`mpips.data.format`.
"""

__version__ = "0.1.0"
