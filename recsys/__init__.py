"""Statistics, retrieval and the data/artifact contracts (numpy/pyarrow level).

Layering: ``embeddings`` (torch modules) <- ``recsys`` <- ``serving`` / ``pipelines``.
Nothing here opens files on its own: callers pass arrays, tables or iterators.
"""
