"""Jobs and the ``recsys`` command line: they read and write data sets and artifacts."""
