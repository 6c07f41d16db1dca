"""Per-rank data of the distributed tests, made from seeds so that the test (the reference, over the
concatenated batch) and every worker rank (its own slice) build the same arrays independently."""
import numpy as np

C = 5
# Rows per rank: uneven, with a rank of 1 sample and (from 3 ranks on) one of 0.
COUNTS = {2: (1, 6), 3: (0, 1, 9), 4: (5, 0, 1, 12)}
# (name, offset, scale): plain; a large offset with a small spread (cancellation); std 3e17 (M2 overflows
# float32 and would lose float64's range if carried as M2 of huge counts).
CASES = (("plain", 0.0, 1.0), ("offset", 1.0e6, 1.0e-2), ("huge", 0.0, 3.0e17))


def rank_rows(size, rank, case):
    name, offset, scale = next(c for c in CASES if c[0] == case)
    rng = np.random.default_rng([size, rank, CASES.index(next(c for c in CASES if c[0] == case))])
    n = COUNTS[size][rank]
    return offset + scale * rng.standard_normal((n, C)) * (1.0 + np.arange(C))


def local_moments(x):
    """This rank's partials: (count, mean, biased variance); NaN where it has no rows."""
    n = x.shape[0]
    if n == 0:
        return 0, np.full(C, np.nan), np.full(C, np.nan)  # ignored: whatever an empty slice gives
    return n, x.mean(axis=0), x.var(axis=0)
