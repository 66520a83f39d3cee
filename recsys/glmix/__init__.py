"""GLMix (Eq. 18): the model, its configuration, the coordinate-descent loop, the per-entity and fixed-effect solvers, the row design and penalty tuning."""
