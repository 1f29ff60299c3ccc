"""Seeds: one tree of NumPy seed sequences, and torch generators scoped to one use.

Every random number pymc-abi draws descends from one :class:`numpy.random.SeedSequence`
per amortizer (:class:`SeedTree`): each use (the simulator, a network's initialization,
a training run, one batch of simulations) takes its own child seed. A call given an
explicit ``random_seed`` uses that seed alone, so its result does not depend on what ran
before. Torch randomness comes from a ``torch.Generator`` passed explicitly wherever torch
takes one; where it does not (``nn.Linear``'s initialization), :func:`scoped_torch_seed`
seeds torch inside a block and restores the global generator after it.

The numpy side (simulator, bank) imports this module too, so torch is imported only by the
two functions that need it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np

__all__ = ["RandomSeed", "SeedTree", "scoped_torch_seed", "seed_int", "torch_generator"]

#: What ``random_seed`` accepts, as in PyMC.
RandomSeed = None | int | np.integer | np.random.SeedSequence | np.random.Generator


def seed_int(random_seed: RandomSeed, fallback: np.random.Generator | None = None) -> int:
    """One integer seed from anything ``random_seed`` accepts.

    Parameters
    ----------
    random_seed : None, int, SeedSequence or Generator
        ``None`` takes a seed from ``fallback`` (fresh entropy when that is ``None`` too).
    fallback : numpy.random.Generator, optional

    Returns
    -------
    int
    """
    if random_seed is None:
        return int((fallback or np.random.default_rng()).integers(2**63))
    if isinstance(random_seed, np.random.Generator):
        return int(random_seed.integers(2**63))
    if isinstance(random_seed, np.random.SeedSequence):
        return int(random_seed.generate_state(1, dtype=np.uint64)[0])
    if isinstance(random_seed, bool) or not isinstance(random_seed, int | np.integer):
        raise ValueError(
            "random_seed must be None, an integer, a numpy SeedSequence or a Generator, got "
            f"{random_seed!r}."
        )
    if random_seed < 0:
        raise ValueError(f"random_seed must be non-negative, got {random_seed}.")
    return int(random_seed)


class SeedTree:
    """A thread-safe source of independent child seeds, from one root seed.

    Parameters
    ----------
    random_seed : None, int, SeedSequence or Generator
        The root; ``None`` takes fresh entropy.

    Examples
    --------
    >>> tree = SeedTree(1)
    >>> a, b = tree.child(), tree.child()
    >>> a != b
    True
    """

    def __init__(self, random_seed: RandomSeed = None):
        self._root = np.random.SeedSequence(seed_int(random_seed))
        self._lock = threading.Lock()

    def __getstate__(self):  # copies and pickles get a lock of their own
        return {"_root": self._root}

    def __setstate__(self, state):
        self._root = state["_root"]
        self._lock = threading.Lock()

    def child(self) -> int:
        """The next child seed (a 32-bit integer); every call gives another one."""
        with self._lock:  # spawning counts children: one thread at a time
            return int(self._root.spawn(1)[0].generate_state(1)[0])

    def resolve(self, random_seed: RandomSeed) -> int:
        """``random_seed`` as an integer; for ``None``, one derived from the next child."""
        if random_seed is None:
            return seed_int(None, np.random.default_rng(self.child()))
        return seed_int(random_seed)


def _torch_seed(seed: int) -> int:
    """A torch generator seed (63 bits) derived from any non-negative integer seed."""
    return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0] >> 1)


def torch_generator(seed: int, device=None, *, derive: bool = True):
    """A ``torch.Generator`` on ``device`` seeded from ``seed``.

    Parameters
    ----------
    seed : int
    device : str or torch.device, optional
        Default the CPU.
    derive : bool, default True
        Seed it with 63 bits derived from ``seed`` by a ``SeedSequence`` (any integer
        seed works); ``False`` seeds it with ``seed`` as it is.
    """
    import torch

    generator = torch.Generator(device=device) if device is not None else torch.Generator()
    return generator.manual_seed(_torch_seed(seed) if derive else int(seed))


@contextlib.contextmanager
def scoped_torch_seed(seed: int, device=None) -> Iterator[None]:
    """Seed torch's global generator inside the block only, restoring it afterwards.

    For torch code that takes no generator (module initialization, the training loop's
    noise); the global state outside the block is left as it was.
    """
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
