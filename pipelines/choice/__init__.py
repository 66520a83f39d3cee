"""Choosing on validation: per-row scores and paired intervals, the classical ladder's rungs reduced and scored, and which representation an artifact ships."""
