"""Development sets for retrieval, generated deterministically at run time.

Each module here writes one set to a cache directory (never into the
repository) and returns its path; :mod:`benchmarks.retrieval` reads every set
in one shape (see :mod:`benchmarks.datasets.base`).
"""
