"""Each signal function against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_curricula.tracking import signals as S

LN3 = math.log(3.0)
NAN = math.nan


def close(actual: torch.Tensor, expected: list[float], *, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=atol, equal_nan=True)


def test_true_class_probabilities_by_hand() -> None:
    # softmax([0, ln 3]) = [1, 3] / 4; softmax([0, 0, 0]) = 1/3 each.
    logits = torch.tensor([[0.0, LN3], [0.0, LN3], [0.0, 0.0]])
    close(S.true_class_probabilities(logits, torch.tensor([1, 0, 1])), [0.75, 0.25, 0.5])
    three = torch.tensor([[0.0, 0.0, 0.0], [LN3, 0.0, 0.0]])  # the second: [3, 1, 1] / 5
    close(S.true_class_probabilities(three, torch.tensor([2, 0])), [1 / 3, 0.6])


def test_true_class_probabilities_are_float32_even_for_half_logits() -> None:
    result = S.true_class_probabilities(torch.tensor([[0.0, LN3]], dtype=torch.float16), torch.tensor([1]))
    assert result.dtype == torch.float32
    close(result, [0.75], atol=1e-3)


def test_el2n_by_hand() -> None:
    # p = [1/4, 3/4]. Target 1: error [1/4, -1/4], norm sqrt(1/8).
    # Target 0: error [-3/4, 3/4], norm sqrt(9/8).
    logits = torch.tensor([[0.0, LN3], [0.0, LN3]])
    close(S.el2n_scores(logits, torch.tensor([1, 0])), [math.sqrt(1 / 8), math.sqrt(9 / 8)])
    # p = [3/5, 1/5, 1/5], target 0: error [-2/5, 1/5, 1/5], norm sqrt(6)/5.
    close(S.el2n_scores(torch.tensor([[LN3, 0.0, 0.0]]), torch.tensor([0])), [math.sqrt(6) / 5])


def test_el2n_range_and_extremes() -> None:
    logits = torch.randn(500, 7, generator=torch.Generator().manual_seed(0)) * 10
    targets = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(1))
    scores = S.el2n_scores(logits, targets)
    assert scores.shape == (500,)
    assert bool((scores >= 0).all())
    assert bool((scores <= math.sqrt(2) + 1e-6).all())
    # All mass on the target: 0. All mass on one wrong class: ||e_wrong - e_target|| = sqrt(2).
    extreme = torch.tensor([[100.0, -100.0], [100.0, -100.0]])
    close(S.el2n_scores(extreme, torch.tensor([0, 1])), [0.0, math.sqrt(2)])


def test_el2n_keeps_precision_for_confident_examples() -> None:
    # p_wrong = e^-d / (1 + e^-d) for two classes; EL2N = sqrt(2) * p_wrong. For d = 9 and d = 10 that is
    # about 1.7e-4 and 6.4e-5: distinct and far from 0, though 1 - p_target is below float32's
    # resolution at 1.
    logits = torch.tensor([[9.0, 0.0], [10.0, 0.0]])
    expected = [math.sqrt(2) / (1 + math.exp(d)) for d in (9.0, 10.0)]
    torch.testing.assert_close(S.el2n_scores(logits, torch.tensor([0, 0])), torch.tensor(expected), rtol=1e-4, atol=0)


def test_margins_by_hand_with_ties() -> None:
    logits = torch.tensor(
        [
            [3.0, 1.0, 2.0],  # target 0: 3 - 2 = 1
            [0.0, 5.0, 1.0],  # target 0: 0 - 5 = -5
            [2.0, 2.0, 1.0],  # target 0, tied with class 1: 0
            [2.0, 2.0, 1.0],  # target 2: 1 - 2 = -1
            [4.0, 4.0, 4.0],  # all tied: 0
        ]
    )
    close(S.margins(logits, torch.tensor([0, 0, 0, 2, 1])), [1.0, -5.0, 0.0, -1.0, 0.0])


def test_margins_two_classes_is_the_logit_difference() -> None:
    close(S.margins(torch.tensor([[0.5, -1.5]]), torch.tensor([1])), [-2.0])


def test_correct_predictions_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    result = S.correct_predictions(logits, torch.tensor([0, 0, 1]))
    assert result.dtype == torch.float32
    assert result.tolist() == [1.0, 0.0, 1.0]


def test_ema_starts_at_the_first_value_and_keeps_unobserved_rows() -> None:
    previous = torch.tensor([NAN, 1.0, 1.0, NAN])
    value = torch.tensor([4.0, 3.0, 9.0, 7.0])
    observed = torch.tensor([True, True, False, False])
    # Row 0: NaN start -> 4. Row 1: 0.5 * 1 + 0.5 * 3 = 2. Row 2: not observed -> 1.
    # Row 3: unobserved NaN stays NaN.
    close(S.ema_update(previous, value, decay=0.5, observed=observed), [4.0, 2.0, 1.0, NAN])


def test_ema_over_three_epochs_by_hand() -> None:
    observed = torch.tensor([True])
    average = torch.tensor([NAN])
    for value in (1.0, 6.0, 11.0):
        average = S.ema_update(average, torch.tensor([value]), decay=0.8, observed=observed)
    # 1 -> 0.8 * 1 + 0.2 * 6 = 2 -> 0.8 * 2 + 0.2 * 11 = 3.8
    close(average, [3.8], atol=1e-5)


def test_ema_with_zero_decay_is_the_latest_value() -> None:
    close(
        S.ema_update(torch.tensor([5.0]), torch.tensor([2.0]), decay=0.0, observed=torch.tensor([True])),
        [2.0],
    )


@pytest.mark.parametrize("previous", [-1, 0, 1])
@pytest.mark.parametrize("correct", [False, True])
@pytest.mark.parametrize("observed", [False, True])
def test_forgetting_only_from_correct_to_wrong_when_observed(previous: int, correct: bool, observed: bool) -> None:
    result = S.forgetting_events(
        torch.tensor([previous], dtype=torch.int8), torch.tensor([correct]), torch.tensor([observed])
    )
    assert result.dtype == torch.bool
    assert result.tolist() == [previous == 1 and not correct and observed]


def test_forgetting_on_a_sequence_of_epochs() -> None:
    # correct, wrong, correct, correct, wrong: forgotten twice (epochs 1 and 4); an unseen epoch in between
    # does not reset the previous state.
    history = [True, False, None, True, True, False]
    last = torch.tensor([-1], dtype=torch.int8)
    events = 0
    for correct in history:
        observed = torch.tensor([correct is not None])
        now = torch.tensor([bool(correct)])
        events += int(S.forgetting_events(last, now, observed).sum())
        last = torch.where(observed, now.to(torch.int8), last)
    assert events == 2


def test_variability_by_hand() -> None:
    # [0, 1]: mean 1/2, population std 1/2. [1, 2, 3, 4]: variance 1.25.
    total = torch.tensor([1.0, 10.0])
    squares = torch.tensor([1.0, 30.0])
    close(S.variability(total, squares, torch.tensor([2, 4])), [0.5, math.sqrt(1.25)])


@pytest.mark.parametrize("value", [0.3, 0.1, 0.7, 0.123456, 0.999])
@pytest.mark.parametrize("count", [1, 3, 7])
def test_variability_of_a_constant_series_is_zero(value: float, count: int) -> None:
    total = torch.zeros(1)
    squares = torch.zeros(1)
    for _ in range(count):  # the running sums exactly as TrainingDynamics keeps them, in float32
        observation = torch.tensor([value])
        total += observation
        squares += observation.square()
    assert S.variability(total, squares, torch.tensor([count])).tolist() == [0.0]


def test_variability_of_unseen_rows_is_nan() -> None:
    result = S.variability(torch.zeros(2), torch.zeros(2), torch.tensor([0, 1]))
    assert math.isnan(result[0].item())
    assert result[1].item() == 0.0


def test_instruction_following_difficulty_by_hand() -> None:
    close(
        S.instruction_following_difficulty(torch.tensor([1.0, 3.0, 4.0]), torch.tensor([2.0, 3.0, 2.0])),
        [0.5, 1, 2],
    )
