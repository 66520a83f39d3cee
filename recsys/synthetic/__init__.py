"""Worlds with known ground truth: the synthetic co-watch world, its configuration, and the bundled digits classification set."""
