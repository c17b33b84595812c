"""The C++ random numbers llama-perplexity picks tasks with, so a subset of N tasks is the same subset.

llama-perplexity seeds `std::mt19937` with 1 and draws in two ways:

- HellaSwag: `std::uniform_int_distribution<size_t>(0, n - 1)`. The standard leaves its algorithm to the
  library; this is libstdc++'s (GCC 11 and later, what Linux builds use): a 32-bit draw times n, the high 32
  bits kept, draws rejected whose low 32 bits fall under (2^32 - n) mod n (Lemire's method).
- WinoGrande and multiple choice: `int(scale * rng() * n)` in single precision, scale = 1 / 2^32.

Python's `random.Random` is the same Mersenne Twister; only the seeding differs (it seeds from an array),
so the state is set here the way `std::mt19937(seed)` sets it and handed over with `setstate`.
"""

from __future__ import annotations

import random

import numpy as np

_N = 624
_MASK = 0xFFFFFFFF


class MT19937:
    """`std::mt19937(seed)`: `next()` is its `operator()`."""

    def __init__(self, seed: int = 5489) -> None:
        state = [seed & _MASK]
        for i in range(1, _N):
            prev = state[-1]
            state.append((1812433253 * (prev ^ (prev >> 30)) + i) & _MASK)
        self._rng = random.Random()
        self._rng.setstate((3, (*state, _N), None))  # index N: the next draw regenerates the whole state

    def next(self) -> int:
        return self._rng.getrandbits(32)

    def below(self, n: int) -> int:
        """libstdc++'s `uniform_int_distribution(0, n - 1)(rng)` for n <= 2^32."""
        product = self.next() * n
        low = product & _MASK
        if low < n:
            threshold = (-n % (1 << 32)) % n
            while low < threshold:
                product = self.next() * n
                low = product & _MASK
        return product >> 32

    def scaled(self, n: int) -> int:
        """`int(scale * rng() * n)` with float arithmetic, scale = 1/(1 + 2^32 - 1); never past n - 1 (a draw
        within 128 of 2^32 rounds to 2^32 in single precision, which would point one past the end)."""
        f32 = np.float32
        x = f32(f32(f32(1.0) / f32(4294967296.0)) * f32(self.next())) * f32(n)
        return min(int(x), n - 1)
