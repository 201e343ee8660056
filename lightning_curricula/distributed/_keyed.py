"""Keyed randomness: seeds from tuples, and random orders and draws that any rank evaluates at its own positions.

Every rank of a run plans from the same ``(seed, epoch)`` without communicating, and a sharded plan is
never materialised on any rank: each evaluates its own positions of a random order. These functions
make that possible: `derived_seed` mixes a tuple into one seed (no two tuples share a stream),
`keyed_permutation` is a bijection of ``[0, n)`` chosen by a key and evaluated at any positions,
`keyed_uniforms` a uniform draw per id that is a function of the key and the id alone, and
`generator_key` turns a ``torch.Generator`` into such a key.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "SPLITMIX_INCREMENT",
    "SPLITMIX_MIX1",
    "SPLITMIX_MIX2",
    "derived_seed",
    "generator_key",
    "keyed_permutation",
    "keyed_uniforms",
]

_MASK64 = (1 << 64) - 1


#: SplitMix64's increment and its finaliser's two multipliers, as unsigned 64-bit integers (also the
#: constants of `selection.keyed_uniforms`, its tensor form).
SPLITMIX_INCREMENT, SPLITMIX_MIX1, SPLITMIX_MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that mixes ``parts`` (such as ``(seed, epoch)``) so that no two tuples share a stream.

    ``seed + epoch`` would make seed 1's epoch ``e`` replay seed 0's epoch ``e + 1``. Each part is
    folded in with the SplitMix64 finaliser, a bijection on 64-bit words, so tuples of values below
    ``2**32`` never collide, and nearby tuples give unrelated seeds.

    Examples:
        >>> derived_seed(1, 0) != derived_seed(0, 1)
        True
        >>> derived_seed(3, 7) == derived_seed(3, 7)
        True
    """
    state = SPLITMIX_INCREMENT
    for part in parts:
        state = _splitmix64((state ^ (part & _MASK64)) * SPLITMIX_MIX1 & _MASK64)
    return state >> 1


def _splitmix64(value: int) -> int:
    value = (value + SPLITMIX_INCREMENT) & _MASK64
    value = ((value ^ (value >> 30)) * SPLITMIX_MIX1) & _MASK64
    value = ((value ^ (value >> 27)) * SPLITMIX_MIX2) & _MASK64
    return value ^ (value >> 31)


def generator_key(generator: torch.Generator) -> int:
    """A 64-bit key for `keyed_permutation`: one draw from ``generator`` (which it advances).

    Examples:
        >>> generator_key(torch.Generator().manual_seed(0)) == generator_key(torch.Generator().manual_seed(0))
        True
    """
    return int(torch.randint(-(1 << 63), (1 << 63) - 1, (), generator=generator))


_MAX_PERMUTATION_SIZE = 1 << 40  # round tables of at most 2**20 entries


def keyed_permutation(n: int, key: int, positions: Tensor | None = None) -> Tensor:
    """The values at ``positions`` of a pseudo-random permutation of ``[0, n)`` chosen by ``key``.

    A random order that is never materialised: ``keyed_permutation(n, key)[p]`` equals
    ``keyed_permutation(n, key, positions=p)``, so a rank can evaluate just its shard of a shuffled plan,
    and a plan's head is a uniformly random subset in a random order at the cost of its size, not of N.

    It is a Feistel network on ``[0, rows * 2**u)``, the smallest grid of ``2**u``-wide rows holding
    ``max(n, 4)`` ids, with ``u = ceil(k / 2)`` for ``2**(k-1) < max(n, 4) <= 2**k``. An id is a pair
    (row, column); rounds alternate ``column ^= table[row]`` and ``row = (row + table[column]) mod rows``,
    with random tables drawn from ``key`` (four rounds; eight up to 256 ids, where a round of a few bits
    mixes little). Cycle-walking keeps it a bijection of ``[0, n)``: an id at or above ``n`` (only in the
    grid's last row: fewer than ``2**u``, about ``sqrt(n)``) goes through the network again until it lands
    below ``n``. So one pass of a dozen vectorised, in-place ``int32`` operations (``int64`` above
    ``2**31`` ids) covers nearly every id. It is not a uniform draw from all ``n!`` orders, but a Feistel
    network with random round functions is a pseudo-random permutation (Luby and Rackoff, 1988): each
    id's position and the relative order of any few ids look uniform.

    Args:
        n: the size of the permuted range, ``0 <= n <= 2**40``.
        key: any integer (its low 64 bits are used); the same key gives the same permutation everywhere.
        positions: int positions in ``[0, n)`` to evaluate; ``None`` for all of ``0, ..., n - 1``.

    Returns:
        ``int64`` values, one per position (``n`` of them without ``positions``).

    Raises:
        ValueError: for ``n`` outside ``[0, 2**40]`` or a position outside ``[0, n)``.

    Examples:
        >>> order = keyed_permutation(10, key=7)
        >>> sorted(order.tolist()) == list(range(10))
        True
        >>> torch.equal(keyed_permutation(10, key=7, positions=torch.tensor([3, 0])), order[[3, 0]])
        True
    """
    if not 0 <= n <= _MAX_PERMUTATION_SIZE:
        raise ValueError(f"n must be in [0, 2**40], got {n!r}.")
    bits = max(2, (n - 1).bit_length())
    width = (bits + 1) // 2  # the columns: 2**width of them
    rows = -(-max(n, 4) // (1 << width))
    dtype = torch.int32 if bits <= 31 else torch.int64
    if positions is None:
        x = torch.arange(n, dtype=dtype)
    else:
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= n):
            raise ValueError(
                f"positions must be in [0, {n}), got values in [{int(positions.min())}, {int(positions.max())}]."
            )
        x = positions.reshape(-1).to(dtype, copy=True)
    tables = _feistel_tables(bits, width, rows, key, dtype)
    # Cycle-walk: pass the values still >= n through the network again. (index_select and index_copy_, not
    # advanced indexing, whose kernels synchronise threads even on small tensors.)
    out = _feistel(x, tables, width, rows)
    pending = (out >= n).nonzero().squeeze(1)
    while pending.numel():
        values = _feistel(torch.index_select(out, 0, pending), tables, width, rows)
        out.index_copy_(0, pending, values)
        pending = torch.index_select(pending, 0, (values >= n).nonzero().squeeze(1))
    return out.long()


def _feistel_tables(bits: int, width: int, rows: int, key: int, dtype: torch.dtype) -> list[Tensor]:
    """The round functions: even rounds map a row to a column mask, odd rounds a column to a row shift."""
    generator = torch.Generator().manual_seed(derived_seed(key, bits))
    rounds = 8 if bits <= 8 else 4  # a round of a few bits mixes little: eight on at most 256 ids
    return [
        torch.randint(1 << width, (rows,), generator=generator, dtype=dtype)
        if i % 2 == 0
        else torch.randint(rows, (1 << width,), generator=generator, dtype=dtype)
        for i in range(rounds)
    ]


def _feistel(x: Tensor, tables: list[Tensor], width: int, rows: int) -> Tensor:
    """One pass over ``x`` (which it consumes): ``column ^= table[row]``, then ``row += table[column] mod rows``."""
    row = torch.bitwise_right_shift(x, width)
    column = x.bitwise_and_((1 << width) - 1)
    mixed = torch.empty_like(x)
    for i, table in enumerate(tables):
        if i % 2 == 0:
            column.bitwise_xor_(torch.index_select(table, 0, row, out=mixed))
        else:
            row.add_(torch.index_select(table, 0, column, out=mixed))
            row.sub_(torch.ge(row, rows, out=mixed).mul_(rows))  # mod rows: the sum is below 2 * rows
    return row.bitwise_left_shift_(width).bitwise_or_(column)


# The same constants as int64 words (two's complement), for wrapping tensor arithmetic.
_GOLDEN, _MIX1, _MIX2 = (value - (1 << 64) for value in (SPLITMIX_INCREMENT, SPLITMIX_MIX1, SPLITMIX_MIX2))


def keyed_uniforms(key: int, ids: Tensor) -> Tensor:
    """One uniform draw in ``[0, 1)`` per id, a function of ``(key, id)`` alone (float64).

    A counter-based generator (the SplitMix64 finaliser of ``key`` and the id, in wrapping ``int64``
    arithmetic): like ``torch.rand(n)[ids]`` for independent draws, but a rank that owns some ids
    draws for them alone, without generating the others', and gets the same values as any other rank.
    In place on two buffers: a dozen passes over ``ids``, no temporaries.

    Examples:
        >>> draws = keyed_uniforms(7, torch.arange(5))
        >>> bool(((draws >= 0) & (draws < 1)).all()), torch.equal(keyed_uniforms(7, torch.arange(2, 4)), draws[2:4])
        (True, True)
    """
    x = ids.to(torch.int64, copy=True).mul_(_GOLDEN).add_(derived_seed(key) - (1 << 63))
    shifted = torch.empty_like(x)
    for bits, multiplier in ((30, _MIX1), (27, _MIX2), (31, 1)):
        x.bitwise_xor_(_shift_right(x, bits, out=shifted)).mul_(multiplier)
    return _shift_right(x, 11, out=shifted).double().mul_(2.0**-53)


def _shift_right(x: Tensor, bits: int, *, out: Tensor) -> Tensor:
    """A logical right shift of int64 words into ``out`` (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return torch.bitwise_right_shift(x, bits, out=out).bitwise_and_((1 << (64 - bits)) - 1)
