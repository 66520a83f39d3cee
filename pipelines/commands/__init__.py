"""The ``recsys`` commands, one module per kind of work; ``pipelines.cli`` registers them."""
