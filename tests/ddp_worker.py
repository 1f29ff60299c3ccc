"""One rank of the data-parallel training test (tests/test_ddp.py), or the single process.

Run as torchrun would run it: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in the environment make it one of several ranks (``abi.fit`` initializes
the gloo process group from them); without them it trains in one process. It trains on
``mu ~ N(0, 1)``, ``y_i ~ N(mu, 1)`` (10 observations) and writes, under ``out``, the
posterior draws for the test datasets and the trained weights of this rank, and saves the
amortizer to its own path (only rank 0 must write it).

Usage: ``python ddp_worker.py OUT BATCH_SIZE STEPS SEED [BANK]``
"""

import os
import sys

import numpy as np
import pymc as pm
import torch

import pymc_abi as abi

N_OBS = 10
MUS = (-1.5, -0.5, 0.5, 1.5)


def main(out, batch_size, steps, seed, bank=None):
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 1)
        pm.Normal("y", mu, 1, observed=np.zeros(N_OBS))
    amortizer = abi.fit(
        model,
        simulations=bank,
        batch_size=batch_size,
        steps=steps,
        validate_every=50,
        random_seed=seed,
        progressbar=False,
    )
    rng = np.random.default_rng(123)
    y = np.stack([rng.normal(m, 1.0, N_OBS) for m in MUS])
    z, _ = amortizer.sample_unconstrained({"y": y}, draws=4000, random_seed=7)
    state = {k: v.cpu() for k, v in amortizer.net.state_dict().items()}
    torch.save(state, os.path.join(out, f"weights{rank}.pt"))
    np.savez(
        os.path.join(out, f"draws{rank}.npz"),
        z=z[..., 0],
        y=y,
        steps=amortizer.history.step[-1],
        val=amortizer.history.val_loss[-1],
    )
    amortizer.save(os.path.join(out, f"rank{rank}.abi"))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]), int(args[2]), int(args[3]), args[4] if len(args) > 4 else None)
