"""The lens size rule: the size it asks for reaches the precision target on streams of known variance."""

import numpy as np

from spinal.analyze.transport.lens_size import tokens_for_precision


def _stream(rng, n_seq, per_seq, between, within, steps=6):
    """Per-token L for ``steps`` steps with means 0..steps-1 (SD known), sequence effects of SD ``between``."""
    seq = np.repeat(np.arange(n_seq), per_seq)
    effect = rng.normal(0, between, n_seq)
    return seq, [s + effect[seq] + rng.normal(0, within, seq.size) for s in range(steps)]


def _analytic_se(n, n_seq, between, within):
    """SE of the mean of n tokens drawn evenly from n_seq sequences: between²/n_seq + within²/n."""
    return np.sqrt(between**2 / n_seq + within**2 / n)


def test_rounds_of_growth_reach_the_target_without_a_large_overshoot():
    """A pilot cannot see a small between-sequence part under within-sequence noise, so one prediction
    undershoots; re-measuring after each growth reaches the target (known variance, several seeds)."""
    from spinal.analyze.transport.lens_size import grow

    steps, target, n_seq, per_seq = 6, 0.01, 2000, 200
    spread = np.std(np.arange(steps), ddof=1)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        seq_all, L_all = _stream(rng, n_seq, per_seq, between=0.5, within=8.0, steps=steps)
        order = rng.permutation(seq_all.size)  # nested draws: the first n of one permutation
        measure = lambda n: ([x[order[:n]] for x in L_all], seq_all[order[:n]])  # noqa: E731
        n, p, k = grow(measure, 8000, seq_all.size, n_seq, target)
        assert p <= target and k >= 1  # the pilot missed it; the rounds reached it
        assert _analytic_se(n, n_seq, 0.5, 8.0) <= 1.05 * target * spread  # by the known variance too
        assert _analytic_se(0.6 * n, n_seq, 0.5, 8.0) > target * spread  # and not by a large overshoot


def test_a_pilot_that_already_meets_the_target_is_kept():
    rng = np.random.default_rng(1)
    seq, L = _stream(rng, 500, 40, between=0.01, within=0.2)
    assert tokens_for_precision(L, seq, 500, 0.01, 10**6) == seq.size


def test_when_the_sequences_themselves_limit_precision_no_size_is_asked_for():
    """Between-sequence spread beyond the target: more tokens of the same prompts cannot reach it."""
    rng = np.random.default_rng(2)
    seq, L = _stream(rng, 50, 40, between=1.0, within=0.5)
    assert tokens_for_precision(L, seq, 50, 0.01, 10**6) is None


def test_the_size_is_capped_at_every_token():
    rng = np.random.default_rng(3)
    seq, L = _stream(rng, 400, 20, between=0.0, within=6.0)
    assert tokens_for_precision(L, seq, 400, 0.01, 9000) == 9000
