"""Reading and writing data sets: the contract's readers and writers, the impressions reader, the memory-mapped frame store and its batch loader, YouTube-8M conversion."""
