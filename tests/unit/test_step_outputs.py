"""`read_step_outputs`: the training_step contract and its error messages."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_curricula import StepOutputs, read_step_outputs

B = 4


def batch(**extra: Any) -> dict[str, Any]:
    return {"x": torch.zeros(B, 2), "index": torch.tensor([5, 0, 2, 9]), **extra}


def outputs(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "loss": torch.tensor(1.0),
        "losses": torch.tensor([0.5, 1.0, 1.5, 2.0]),
        "logits": torch.zeros(B, 3),
        "targets": torch.tensor([0, 1, 2, 0]),
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def test_valid_outputs_are_read_and_detached() -> None:
    logits = torch.randn(B, 3, requires_grad=True)
    losses = (logits**2).sum(dim=1)
    step = read_step_outputs(outputs(losses=losses, logits=logits), batch())
    assert isinstance(step, StepOutputs)
    assert step.index.tolist() == [5, 0, 2, 9]
    assert step.index.dtype == torch.int64
    assert torch.equal(step.losses, losses.detach())
    assert not step.losses.requires_grad
    assert step.logits is not None
    assert not step.logits.requires_grad
    assert step.targets is not None
    assert step.targets.tolist() == [0, 1, 2, 0]


def test_loss_only_outputs_have_no_classification_fields() -> None:
    step = read_step_outputs(outputs(logits=None, targets=None), batch())
    assert step.logits is None
    assert step.targets is None


def test_index_from_outputs_wins_over_the_batch_and_works_for_tuple_batches() -> None:
    step = read_step_outputs(outputs(index=torch.tensor([1, 2, 3, 4], dtype=torch.int32)), batch())
    assert step.index.tolist() == [1, 2, 3, 4]
    assert step.index.dtype == torch.int64
    tuple_batch = (torch.zeros(B, 2), torch.zeros(B), torch.tensor([7, 6, 5, 4]))
    assert read_step_outputs(outputs(index=tuple_batch[2]), tuple_batch).index.tolist() == [7, 6, 5, 4]


def test_custom_index_key() -> None:
    step = read_step_outputs(outputs(), {"id": torch.tensor([3, 2, 1, 0])}, index_key="id")
    assert step.index.tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize(
    ("returned", "name"),
    [(torch.tensor(1.0), "Tensor"), (None, "NoneType"), ([torch.tensor(1.0)], "list")],
)
def test_non_mapping_outputs(returned: Any, name: str) -> None:
    with pytest.raises(TypeError, match=rf"TrainingDynamics got a {name} from training_step\. training_step must"):
        read_step_outputs(returned, batch())


def test_missing_losses_lists_the_keys() -> None:
    with pytest.raises(ValueError, match=r"outputs have no 'losses' \(keys: \['logits', 'loss', 'targets'\]\)"):
        read_step_outputs(outputs(losses=None), batch())


@pytest.mark.parametrize(
    ("losses", "shape"),
    [(torch.tensor(1.0), r"\(\)"), (torch.zeros(B, 1), r"\(4, 1\)"), (torch.zeros(B + 1), r"\(5,\)")],
)
def test_losses_with_a_wrong_shape(losses: torch.Tensor, shape: str) -> None:
    with pytest.raises(ValueError, match=rf"'losses' has shape {shape}, expected \(4,\): .*not reduced"):
        read_step_outputs(outputs(losses=losses), batch())


def test_integer_losses() -> None:
    with pytest.raises(TypeError, match=r"'losses' must be a floating-point tensor, got dtype torch.int64"):
        read_step_outputs(outputs(losses=torch.tensor([1, 2, 3, 4])), batch())


def test_losses_that_are_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=r"'losses' must be a torch.Tensor, got list"):
        read_step_outputs(outputs(losses=[0.1, 0.2, 0.3, 0.4]), batch())


def test_logits_without_targets() -> None:
    with pytest.raises(ValueError, match=r"have 'logits' but no 'targets': give both or neither"):
        read_step_outputs(outputs(targets=None), batch())


def test_targets_without_logits() -> None:
    with pytest.raises(ValueError, match=r"have 'targets' but no 'logits': give both or neither"):
        read_step_outputs(outputs(logits=None), batch())


@pytest.mark.parametrize(
    ("logits", "shape"),
    [(torch.zeros(B), r"\(4,\)"), (torch.zeros(B, 1), r"\(4, 1\)"), (torch.zeros(B - 1, 3), r"\(3, 3\)")],
)
def test_logits_with_a_wrong_shape(logits: torch.Tensor, shape: str) -> None:
    with pytest.raises(
        ValueError, match=rf"'logits' has shape {shape}, expected \(4, num_classes\) with num_classes >= 2"
    ):
        read_step_outputs(outputs(logits=logits), batch())


def test_targets_with_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"'targets' has shape \(4, 1\), expected \(4,\): \(batch_size,\) class ids"):
        read_step_outputs(outputs(targets=torch.zeros(B, 1, dtype=torch.long)), batch())


def test_float_targets() -> None:
    with pytest.raises(TypeError, match=r"'targets' must hold integer class ids, got dtype torch.float32"):
        read_step_outputs(outputs(targets=torch.zeros(B)), batch())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool])
def test_non_integer_ids(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=rf"'index' must hold integer example ids, got dtype {dtype}"):
        read_step_outputs(outputs(), batch(index=torch.ones(B, dtype=dtype)))


def test_ids_with_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"'index' has shape \(2, 2\), expected \(batch_size,\)"):
        read_step_outputs(outputs(), batch(index=torch.zeros(2, 2, dtype=torch.long)))


def test_ids_that_are_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=r"'index' must be a torch.Tensor, got list"):
        read_step_outputs(outputs(), batch(index=[0, 1, 2, 3]))


def test_missing_ids_in_a_mapping_batch() -> None:
    with pytest.raises(
        ValueError, match=r"Cannot find the example ids: .* have 'index'\. Wrap the dataset in WithIndex"
    ):
        read_step_outputs(outputs(), {"x": torch.zeros(B, 2)})


def test_missing_ids_in_a_tuple_batch_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"have 'id'\..*\"id\": batch\[-1\]"):
        read_step_outputs(outputs(), (torch.zeros(B, 2), torch.arange(B)), index_key="id")


def test_weights_come_from_the_batch_or_the_outputs() -> None:
    assert read_step_outputs(outputs(), batch()).weights is None
    from_batch = read_step_outputs(outputs(), batch(weight=torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)))
    assert from_batch.weights is not None
    assert from_batch.weights.tolist() == [1.0, 2.0, 0.5, 1.0]
    given = torch.tensor([3.0, 3.0, 3.0, 3.0])
    from_outputs = read_step_outputs(outputs(weight=given), batch(weight=torch.ones(B)))
    assert from_outputs.weights is not None
    assert from_outputs.weights.tolist() == [3.0] * B  # the outputs win, like the ids


def test_weights_of_the_wrong_shape_raise() -> None:
    with pytest.raises(ValueError, match=r"'weight' has shape \(3,\), expected \(4,\)"):
        read_step_outputs(outputs(), batch(weight=torch.ones(3)))


def test_a_step_that_reports_its_own_ids_is_not_given_the_batch_weights() -> None:
    # Selection inside the step trains on part of the batch: the batch's weights belong to other examples.
    batch = {"index": torch.tensor([0, 1, 2, 3]), "weight": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    part = read_step_outputs({"losses": torch.tensor([0.5, 2.0]), "index": torch.tensor([3, 1])}, batch)
    assert part.weights is None
    own = {"losses": torch.tensor([0.5, 2.0]), "index": torch.tensor([3, 1]), "weight": torch.tensor([4.0, 2.0])}
    assert read_step_outputs(own, batch).weights.tolist() == [4.0, 2.0]
