"""The offline evaluation: test rows and scores, AUC statistics, the baseline and coordinate comparisons, and the report."""
