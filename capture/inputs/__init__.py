"""What a capture reads: prompt sets from files and datasets, and the row layouts researchers keep them in."""
