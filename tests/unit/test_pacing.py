"""Pacing functions: values by hand at start, midway and saturation, monotone growth, validation."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_curricula import Curriculum
from lightning_curricula.policies.pacing import PACING_FUNCTIONS, pacing_function, training_progress

START, SATURATION = 0.2, 0.8

# Hand-computed values at progress t = 0.4 (x = t / saturation = 0.5) for start 0.2.
HALFWAY = {
    "linear": 0.2 + 0.8 * 0.5,  # 0.6
    "root": 0.2 + 0.8 * math.sqrt(0.5),  # 0.7657
    "geometric": 0.2**0.5,  # 0.4472
    "exponential": 0.2 + 0.8 * (math.exp(2.5) - 1) / (math.exp(5) - 1),  # 0.2607
    "step": 0.2 + 0.8 * 0.5,  # floor(4 * 0.5) / 4 = 0.5
}


def test_every_named_pacing_has_a_hand_computed_case() -> None:
    assert sorted(HALFWAY) == sorted(PACING_FUNCTIONS)


@pytest.mark.parametrize("name", sorted(HALFWAY))
def test_start_halfway_saturation_and_end(name: str) -> None:
    pace = pacing_function(name, start=START, saturation=SATURATION)
    assert pace(0.0) == pytest.approx(START, abs=1e-12)
    assert pace(0.4) == pytest.approx(HALFWAY[name], abs=1e-12)
    assert pace(SATURATION) == pytest.approx(1.0, abs=1e-12)
    assert pace(0.9) == pytest.approx(1.0, abs=1e-12)
    assert pace(1.0) == pytest.approx(1.0, abs=1e-12)


def test_hand_values_off_the_midpoint() -> None:
    # x = 0.3 / 0.8 = 0.375
    assert pacing_function("step", start=0.2, saturation=0.8)(0.3) == pytest.approx(0.2 + 0.8 * 0.25)
    assert pacing_function("root", start=0.5, saturation=1.0)(0.25) == pytest.approx(0.5 + 0.5 * 0.5)
    assert pacing_function("geometric", start=0.25, saturation=1.0)(0.5) == pytest.approx(0.5)
    # Just below a step the share has not jumped yet.
    assert pacing_function("step", start=0.2, saturation=1.0)(0.2499) == pytest.approx(0.2)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(PACING_FUNCTIONS)),
    start=st.floats(0.01, 1.0),
    saturation=st.floats(0.05, 1.0),
)
def test_monotone_non_decreasing_from_start_to_one(name: str, start: float, saturation: float) -> None:
    pace = pacing_function(name, start=start, saturation=saturation)
    grid = [i / 200 for i in range(201)]
    values = [pace(t) for t in grid]
    assert all(later >= earlier - 1e-12 for earlier, later in zip(values, values[1:], strict=False))
    assert values[0] == pytest.approx(start)
    assert values[-1] == pytest.approx(1.0)
    assert all(start - 1e-12 <= value <= 1.0 + 1e-12 for value in values)


def test_a_callable_is_used_as_is() -> None:
    def mine(t: float) -> float:
        return 0.5 * t

    assert pacing_function(mine) is mine
    assert pacing_function(mine, start=0.9, saturation=0.1)(1.0) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": 0.0}, "start must be in (0, 1], got 0.0"),
        ({"start": 1.5}, "start must be in (0, 1], got 1.5"),
        ({"start": -0.1}, "start must be in (0, 1], got -0.1"),
        ({"saturation": 0.0}, "saturation must be in (0, 1], got 0.0"),
        ({"saturation": 1.2}, "saturation must be in (0, 1], got 1.2"),
    ],
)
def test_bad_start_or_saturation_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        pacing_function("linear", **kwargs)


def test_unknown_name_raises_and_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"Unknown pacing 'cubic'; choose one of \['exponential', 'geometric'"):
        pacing_function("cubic")


@pytest.mark.parametrize("name", sorted(PACING_FUNCTIONS))
def test_named_pacing_and_a_curriculum_holding_it_pickle(name: str) -> None:
    pace = pacing_function(name, start=0.3, saturation=0.6)
    copy = pickle.loads(pickle.dumps(pace))  # ddp_spawn and DataLoader workers pickle the policy
    assert [copy(t / 10) for t in range(11)] == [pace(t / 10) for t in range(11)]
    policy = pickle.loads(pickle.dumps(Curriculum(pacing=name, start=0.3, saturation=0.6)))
    assert [policy.epoch_size(100, epoch, 5) for epoch in range(5)] == [
        Curriculum(pacing=name, start=0.3, saturation=0.6).epoch_size(100, epoch, 5) for epoch in range(5)
    ]


@pytest.mark.parametrize("name", sorted(PACING_FUNCTIONS))
@pytest.mark.parametrize("num_epochs", [2, 3, 8, 10])
def test_saturation_one_trains_the_last_epoch_on_all_data(name: str, num_epochs: int) -> None:
    # epoch / num_epochs stopped at (E - 1) / E: with 8 epochs the last trained on 90% (linear), 80% (step).
    policy = Curriculum(pacing=name, start=0.2, saturation=1.0)
    assert policy.epoch_size(1000, num_epochs - 1, num_epochs) == 1000
    if num_epochs > 2:
        assert policy.epoch_size(1000, num_epochs - 2, num_epochs) < 1000


def test_training_progress_runs_from_zero_to_one() -> None:
    assert [training_progress(epoch, 8) for epoch in (0, 7)] == [0.0, 1.0]
    assert training_progress(0, 1) == 1.0
    assert training_progress(9, 8) == 1.0
    with pytest.raises(ValueError, match="got -1 and 3"):
        training_progress(-1, 3)
