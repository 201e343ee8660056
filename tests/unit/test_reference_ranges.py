"""`ReferenceLosses.lookup` refuses ids it has no loss for: negative ids (which would wrap around to the end of
the table) and ids past its end, with a message naming the ids and the valid range."""

from __future__ import annotations

import pytest
import torch

from lightning_curricula import ReferenceLosses


@pytest.mark.parametrize(
    ("ids", "bad"), [([0, -1], "-1"), ([2, 3], "3"), ([-4, 7], "-4 and 7")], ids=["negative", "past", "both"]
)
def test_lookup_refuses_ids_outside_the_table_naming_the_range(ids: list[int], bad: str) -> None:
    reference = ReferenceLosses(torch.tensor([0.1, 2.3, 0.7]))
    with pytest.raises(ValueError, match=rf"ids {bad}.*0 \.\. 2.*3 losses"):
        reference.lookup(torch.tensor(ids))


def test_lookup_of_valid_and_no_ids() -> None:
    reference = ReferenceLosses(torch.tensor([0.1, 2.3, 0.7]))
    assert reference.lookup(torch.tensor([2, 0, 2])).tolist() == reference.losses[[2, 0, 2]].tolist()
    assert reference.lookup(torch.tensor([], dtype=torch.int64)).numel() == 0
    with pytest.raises(ValueError, match="has no losses"):
        ReferenceLosses(torch.empty(0)).lookup(torch.tensor([0]))
