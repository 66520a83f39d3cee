"""The co-watch embedding's training: triplet data, the training loop, the starting point and settings search, and embedding a catalogue with the trained model."""
