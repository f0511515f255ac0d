"""Comparing checkpoints on one token stream: paired statistics, aggregates, the training series, the result folder."""
