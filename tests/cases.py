"""Deterministic test-case generation: a pairwise covering array over many dimensions, so every pair of
values of any two dimensions appears in some case, without the full Cartesian product."""

from __future__ import annotations

import itertools
import random


def pairwise(dims: dict, valid=lambda case: True, seed=0):
    """Greedy all-pairs: returns a list of dicts covering every (dim_a=value, dim_b=value) pair that
    appears in at least one valid case."""
    names = list(dims)
    rng = random.Random(seed)
    uncovered = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for i in range(len(dims[names[a]])):
            for j in range(len(dims[names[b]])):
                uncovered.add((a, i, b, j))

    def pairs_of(idx):
        return {(a, idx[a], b, idx[b]) for a, b in itertools.combinations(range(len(names)), 2)}

    cases, stale = [], 0
    while uncovered and stale < 50:
        best, best_gain = None, 0
        a, i, b, j = rng.choice(sorted(uncovered))  # seed each candidate with an uncovered pair
        for _ in range(60):
            idx = [rng.randrange(len(dims[n])) for n in names]
            idx[a], idx[b] = i, j
            case = {n: dims[n][k] for n, k in zip(names, idx)}
            if not valid(case):
                continue
            gain = len(pairs_of(idx) & uncovered)
            if gain > best_gain:
                best, best_gain = idx, gain
        if best is None:
            uncovered.discard((a, i, b, j))  # no valid case holds this pair
            stale += 1
            continue
        uncovered -= pairs_of(best)
        cases.append({n: dims[n][k] for n, k in zip(names, best)})
    return cases
