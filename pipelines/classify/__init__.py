"""The paper's classification experiments (section 4.1): the classifier's training, its baselines and the tables and figures."""
