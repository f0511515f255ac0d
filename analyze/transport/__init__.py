"""The transport score L: Fisher–Rao and companion distances between adjacent layers' logit-lens readouts."""
