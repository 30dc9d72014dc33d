"""The benchmarks' model: the official configuration, or a smaller one from ``--config``."""

from __future__ import annotations

CONFIG_HELP = "N,M,d0,d1,d2,d3 for a smaller model (tests)"


def random_model(config: str | None, seed: int = 0):
    """mambaic.random_model(seed), with N, M and the four depths from ``config`` ("N,M,d0,d1,d2,d3")."""
    import mambaic

    if not config:
        return mambaic.random_model(seed)
    N, M, *depths = (int(v) for v in config.split(","))
    return mambaic.random_model(seed, N=N, M=M, depths=tuple(depths))
