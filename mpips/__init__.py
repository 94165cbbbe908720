"""mpips: a parameter server for distributed machine learning, in Python on MPI."""

__version__ = "0.1.0"
