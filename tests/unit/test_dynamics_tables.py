"""Property tests of the `TrainingDynamics` tables against a per-example Python reference.

The callback's per-step `update` and per-epoch `_finish_epoch` are driven directly (no `Trainer`): any
split of an epoch's visits into batches, in any order, with repeats, omissions and non-finite values,
must give the tables that `helpers.reference_signals` computes example by example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from helpers import Visit, assert_signals_equal, assert_signals_match, reference_signals
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_curricula import StepOutputs, TrainingDynamics

NUM_CLASSES = 3
NONFINITE = (math.nan, math.inf, -math.inf)

# Small integer and half-integer logits: exact in float32 and often tied, so arg-max and margin ties occur.
logit_values = st.integers(-6, 6).map(lambda v: v / 2)
finite_losses = st.floats(0.0, 8.0, width=32)


@st.composite
def visits_of_one_example(draw: st.DrawFn, *, epoch: int, index: int, classification: bool) -> Visit:
    bad = draw(st.sampled_from(["none"] * 6 + ["loss", "logits"]))
    loss = draw(st.sampled_from(NONFINITE)) if bad == "loss" else draw(finite_losses)
    if not classification:
        return Visit(epoch, index, loss if bad != "logits" else math.nan)
    logits = draw(st.lists(logit_values, min_size=NUM_CLASSES, max_size=NUM_CLASSES))
    if bad == "logits":
        logits[draw(st.integers(0, NUM_CLASSES - 1))] = draw(st.sampled_from(NONFINITE))
    return Visit(epoch, index, loss, tuple(logits), draw(st.integers(0, NUM_CLASSES - 1)))


@st.composite
def training_runs(draw: st.DrawFn) -> tuple[int, bool, list[list[list[Visit]]]]:
    """``(num_examples, classification, epochs)``; each epoch is a list of non-empty batches of visits."""
    num_examples = draw(st.integers(1, 6))
    classification = draw(st.booleans())
    epochs = []
    for epoch in range(draw(st.integers(1, 4))):
        # Which examples this epoch visits, with repeats and omissions, in any order.
        ids = draw(st.lists(st.integers(0, num_examples - 1), min_size=0, max_size=3 * num_examples))
        visits = [draw(visits_of_one_example(epoch=epoch, index=index, classification=classification)) for index in ids]
        cuts = sorted(draw(st.sets(st.integers(1, max(len(visits) - 1, 1)), max_size=len(visits))))
        bounds = [0, *[cut for cut in cuts if cut < len(visits)], len(visits)]
        epochs.append([visits[start:stop] for start, stop in zip(bounds, bounds[1:], strict=False) if stop > start])
    return num_examples, classification, epochs


def step_outputs(batch: Sequence[Visit]) -> StepOutputs:
    has_logits = batch[0].logits is not None
    return StepOutputs(
        index=torch.tensor([visit.index for visit in batch]),
        losses=torch.tensor([visit.loss for visit in batch]),
        logits=torch.tensor([visit.logits for visit in batch]) if has_logits else None,
        targets=torch.tensor([visit.target for visit in batch]) if has_logits else None,
    )


def run_epochs(dynamics: TrainingDynamics, epochs: Sequence[Sequence[Sequence[Visit]]]) -> list[dict[str, float]]:
    """What the callback's hooks do: ``update`` per batch, then reduce (a no-op here) and finish the epoch."""
    metrics = []
    for epoch, batches in enumerate(epochs):
        for batch in batches:
            dynamics.update(step_outputs(batch))
        if dynamics._accumulator is not None:  # on_train_epoch_end skips this before the first batch
            metrics.append(dynamics._finish_epoch(dynamics._accumulator.clone(), epoch))
            dynamics._accumulator.zero_()
        dynamics.epochs_tracked = epoch + 1
    return metrics


@settings(max_examples=150, deadline=None)
@given(run=training_runs(), ema_decay=st.sampled_from([0.0, 0.5, 0.8]))
def test_tables_match_the_per_example_reference(run: tuple[int, bool, Any], ema_decay: float) -> None:
    num_examples, classification, epochs = run
    dynamics = TrainingDynamics(num_examples=num_examples, ema_decay=ema_decay)
    metrics = run_epochs(dynamics, epochs)
    visits = [visit for batches in epochs for batch in batches for visit in batch]
    if not visits:  # nothing trained: no tables beyond the empty loss columns
        assert dynamics.signals()["visits"].tolist() == [0] * num_examples
        return
    expected = reference_signals(visits, num_examples, ema_decay=ema_decay, classification=classification)
    assert_signals_match(dynamics.signals(), expected)
    # The per-epoch metrics count the skipped visits of each epoch.
    for epoch_metrics, batches in zip(metrics, epochs[len(epochs) - len(metrics) :], strict=True):
        skipped = sum(not _finite(visit) for batch in batches for visit in batch)
        assert epoch_metrics["nonfinite_losses"] == skipped


def _finite(visit: Visit) -> bool:
    return math.isfinite(visit.loss) and (visit.logits is None or all(math.isfinite(v) for v in visit.logits))


@settings(max_examples=60, deadline=None)
@given(run=training_runs(), data=st.data())
def test_batch_split_and_order_do_not_change_the_tables(run: tuple[int, bool, Any], data: st.DataObject) -> None:
    num_examples, _, epochs = run
    reshuffled = []
    for batches in epochs:
        visits = data.draw(st.permutations([visit for batch in batches for visit in batch]))
        size = data.draw(st.integers(1, max(len(visits), 1)))
        reshuffled.append([visits[start : start + size] for start in range(0, len(visits), size)])
    first = TrainingDynamics(num_examples=num_examples)
    second = TrainingDynamics(num_examples=num_examples)
    run_epochs(first, epochs)
    run_epochs(second, reshuffled)
    one, two = first.signals(), second.signals()
    assert sorted(one) == sorted(two)
    for key in one:  # float sums in another order may differ in the last bit
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-5, equal_nan=True, msg=key)


def test_a_small_case_by_hand() -> None:
    # Example 0: epoch 0 two visits (losses 1 and 3, correct twice), epoch 1 one visit (loss 5, wrong).
    # Example 1: epoch 0 one visit with a NaN loss (skipped), epoch 1 one visit (loss 2, correct).
    # Example 2: never visited.
    dynamics = TrainingDynamics(num_examples=3, ema_decay=0.5)
    right, wrong = (2.0, 0.0, 0.0), (0.0, 2.0, 0.0)
    run_epochs(
        dynamics,
        [
            [[Visit(0, 0, 1.0, right, 0), Visit(0, 1, math.nan, right, 0)], [Visit(0, 0, 3.0, right, 0)]],
            [[Visit(1, 1, 2.0, right, 0), Visit(1, 0, 5.0, wrong, 0)]],
        ],
    )
    s = dynamics.signals()
    assert s["visits"].tolist() == [3, 1, 0]
    assert s["nonfinite"].tolist() == [0, 1, 0]
    assert s["epochs_seen"].tolist() == [2, 1, 0]
    assert s["last_epoch"].tolist() == [1, 1, -1]
    assert s["loss"][:2].tolist() == [5.0, 2.0]
    assert s["loss_mean"][:2].tolist() == [3.5, 2.0]  # mean of the epoch means 2 and 5
    assert s["loss_ema"][:2].tolist() == [3.5, 2.0]  # 2, then 0.5 * 2 + 0.5 * 5
    assert s["margin"][:2].tolist() == [-2.0, 2.0]
    assert s["aum"][:2].tolist() == [0.0, 2.0]  # (2 + -2) / 2
    assert s["correctness"][:2].tolist() == [0.5, 1.0]
    assert s["forgetting_events"].tolist() == [1, 0, 0]
    for key in (
        "loss",
        "loss_mean",
        "loss_ema",
        "el2n",
        "margin",
        "aum",
        "confidence",
        "variability",
        "correctness",
    ):
        assert math.isnan(s[key][2].item()), key


def test_majority_of_visits_decides_correctness_in_an_epoch() -> None:
    right, wrong = (1.0, 0.0), (0.0, 1.0)
    dynamics = TrainingDynamics(num_examples=3)
    run_epochs(
        dynamics,
        [
            [
                # Example 0: 1 of 2 visits correct (not a strict majority); example 1: 2 of 3;
                # example 2: 1 of 3.
                [Visit(0, 0, 1.0, right, 0), Visit(0, 0, 1.0, wrong, 0)],
                [Visit(0, 1, 1.0, right, 0), Visit(0, 1, 1.0, right, 0), Visit(0, 1, 1.0, wrong, 0)],
                [Visit(0, 2, 1.0, right, 0), Visit(0, 2, 1.0, wrong, 0), Visit(0, 2, 1.0, wrong, 0)],
            ]
        ],
    )
    assert dynamics.signals()["correctness"].tolist() == [0.0, 1.0, 0.0]


def test_repeats_count_as_visits_not_as_epochs() -> None:
    dynamics = TrainingDynamics(num_examples=2)
    run_epochs(dynamics, [[[Visit(0, 1, 1.0), Visit(0, 1, 3.0)], [Visit(0, 1, 2.0)]]])
    s = dynamics.signals()
    assert s["visits"].tolist() == [0, 3]
    assert s["epochs_seen"].tolist() == [0, 1]
    assert s["loss"][1].item() == 2.0
    assert "margin" not in s  # loss-only steps: no classification columns


def test_an_epoch_without_visits_leaves_tables_unchanged_but_counts() -> None:
    dynamics = TrainingDynamics(num_examples=2)
    run_epochs(dynamics, [[[Visit(0, 0, 1.0)]], [], [[Visit(2, 0, 3.0)]]])
    s = dynamics.signals()
    assert s["epochs_seen"].tolist() == [2, 0]
    assert s["visits"].tolist() == [2, 0]
    assert s["last_epoch"].tolist() == [2, -1]
    assert s["loss_mean"][0].item() == 2.0
    assert dynamics.epochs_tracked == 3


def test_on_nonfinite_raise_names_the_ids() -> None:
    dynamics = TrainingDynamics(num_examples=5, on_nonfinite="raise")
    batch = [Visit(0, 3, 1.0), Visit(0, 1, math.inf), Visit(0, 4, math.nan)]
    with pytest.raises(FloatingPointError, match=r"TrainingDynamics\(name='dynamics'\): non-finite loss .*\[1, 4\]"):
        dynamics.update(step_outputs(batch))


def test_on_nonfinite_raise_also_checks_logits() -> None:
    dynamics = TrainingDynamics(num_examples=5, on_nonfinite="raise")
    batch = [Visit(0, 2, 1.0, (0.0, math.inf), 1), Visit(0, 0, 1.0, (0.0, 1.0), 1)]
    with pytest.raises(FloatingPointError, match=r"ids \[2\]"):
        dynamics.update(step_outputs(batch))


def test_on_nonfinite_raise_accepts_finite_batches() -> None:
    dynamics = TrainingDynamics(num_examples=2, on_nonfinite="raise")
    run_epochs(dynamics, [[[Visit(0, 0, 1.0), Visit(0, 1, 2.0)]]])
    assert dynamics.signals()["loss"].tolist() == [1.0, 2.0]


def test_logits_appearing_or_disappearing_after_the_first_batch_raise() -> None:
    began = TrainingDynamics(num_examples=2)
    began.update(step_outputs([Visit(0, 0, 1.0)]))
    with pytest.raises(ValueError, match=r"training_step began returning 'logits' after the first batch"):
        began.update(step_outputs([Visit(0, 1, 1.0, (0.0, 1.0), 0)]))
    stopped = TrainingDynamics(num_examples=2)
    stopped.update(step_outputs([Visit(0, 1, 1.0, (0.0, 1.0), 0)]))
    with pytest.raises(ValueError, match=r"training_step stopped returning 'logits' after the first batch"):
        stopped.update(step_outputs([Visit(0, 0, 1.0)]))


def test_update_before_the_size_is_known_raises() -> None:
    with pytest.raises(RuntimeError, match=r"update called before the dataset size is known"):
        TrainingDynamics().update(step_outputs([Visit(0, 0, 1.0)]))


def test_signals_before_the_size_is_known_raises() -> None:
    with pytest.raises(RuntimeError, match=r"has no tables yet"):
        TrainingDynamics().signals()


def test_fresh_tracker_has_nan_rows_and_zero_counts() -> None:
    s = TrainingDynamics(num_examples=4).signals()
    assert s["index"].tolist() == [0, 1, 2, 3]
    assert s["visits"].tolist() == [0] * 4
    assert s["epochs_seen"].tolist() == [0] * 4
    assert s["last_epoch"].tolist() == [-1] * 4
    assert all(math.isnan(v) for v in s["loss"].tolist() + s["loss_mean"].tolist() + s["loss_ema"].tolist())


def test_loss_history_keeps_the_last_epochs() -> None:
    dynamics = TrainingDynamics(num_examples=2, history_epochs=2)
    dynamics._history = torch.full((2, 2), math.nan)  # what on_train_start allocates
    run_epochs(dynamics, [[[Visit(0, 0, 1.0)]], [[Visit(1, 1, 2.0)]], [[Visit(2, 0, 3.0), Visit(2, 1, 4.0)]]])
    epochs, table = dynamics.loss_history()
    assert epochs == [1, 2]
    torch.testing.assert_close(table, torch.tensor([[math.nan, 2.0], [3.0, 4.0]]), equal_nan=True)


def test_state_dict_round_trip_continues_identically() -> None:
    epochs = [
        [[Visit(0, 0, 1.0, (1.0, 0.0), 0), Visit(0, 2, 2.0, (0.0, 1.0), 0)]],
        [[Visit(1, 1, 0.5, (1.0, 0.0), 0), Visit(1, 0, 1.5, (0.0, 1.0), 0)]],
    ]
    straight = TrainingDynamics(num_examples=3)
    run_epochs(straight, epochs)
    first = TrainingDynamics(num_examples=3)
    run_epochs(first, epochs[:1])
    resumed = TrainingDynamics(num_examples=3)
    resumed.load_state_dict(first.state_dict())
    run_epochs(resumed, [[], *epochs[1:]])
    assert_signals_equal(resumed.signals(), straight.signals())


def test_load_state_dict_checks_version_and_size() -> None:
    source = TrainingDynamics(num_examples=3)
    run_epochs(source, [[[Visit(0, 0, 1.0)]]])
    state = source.state_dict()
    with pytest.raises(ValueError, match=r"the checkpoint tracks 3 examples, this run has 5"):
        TrainingDynamics(num_examples=5).load_state_dict(state)
    with pytest.raises(ValueError, match=r"state has version 99; this release reads version 2"):
        TrainingDynamics(num_examples=3).load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match=r"history_epochs=2 but the checkpoint kept 0 epochs of history"):
        TrainingDynamics(num_examples=3, history_epochs=2).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, r"name must be a non-empty string"),
        ({"num_examples": 0}, r"num_examples must be a positive integer or None, got 0"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\), got 1.0"),
        ({"ema_decay": -0.1}, r"ema_decay must be in \[0, 1\), got -0.1"),
        ({"history_epochs": -1}, r"history_epochs must be >= 0, got -1"),
        ({"on_nonfinite": "ignore"}, r"on_nonfinite must be 'skip' or 'raise', got 'ignore'"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingDynamics(**kwargs)


def test_state_key_depends_on_the_name() -> None:
    assert TrainingDynamics(name="a").state_key != TrainingDynamics(name="b").state_key
    assert TrainingDynamics(name="a").state_key == TrainingDynamics(name="a", ema_decay=0.1).state_key


def test_an_old_state_version_is_refused_with_a_clear_message() -> None:
    old = {"version": 1, "num_examples": 3, "epochs_tracked": 1, "tables": {"last_epoch": torch.zeros(3)}}
    with pytest.raises(ValueError, match=r"has version 1; this release reads version 2 .*narrower dtypes"):
        TrainingDynamics(num_examples=3).load_state_dict(old)


def tracked_bytes_per_example(dynamics: TrainingDynamics) -> float:
    """What benchmarks/tracking_memory.py counts: every table and the accumulator, per example."""
    assert dynamics._accumulator is not None
    assert dynamics.num_examples is not None
    tensors = [*dynamics._tables.values(), dynamics._accumulator]
    return sum(t.numel() * t.element_size() for t in tensors) / dynamics.num_examples


@pytest.mark.parametrize(("classification", "budget"), [(True, 64 - 1), (False, 24)])
def test_memory_per_example_is_within_budget(classification: bool, budget: int) -> None:
    # at most 64 bytes per example with every classification signal (one of them for the
    # visuals' predictions), at most 24 loss-only; a few scalar slots are shared by all examples.
    size = 10_000
    dynamics = TrainingDynamics(num_examples=size)
    logits = (1.0, 0.0) if classification else None
    run_epochs(dynamics, [[[Visit(0, index, 1.0, logits, 0 if logits else None) for index in range(0, size, 7)]]])
    assert ("margin" in dynamics.signals()) == classification
    assert tracked_bytes_per_example(dynamics) <= budget + 0.01


def test_counts_that_outgrow_their_dtype_are_widened_exactly() -> None:
    dynamics = TrainingDynamics(num_examples=2)
    assert dynamics._count_dtype() == torch.uint8
    # 300 visits of example 1 in one epoch, one of them non-finite: more than a uint8 holds.
    visits = [Visit(0, 1, float(loss)) for loss in range(299)] + [Visit(0, 1, math.nan), Visit(0, 0, 5.0)]
    run_epochs(dynamics, [[visits]])
    assert dynamics._tables["visits"].dtype == torch.int16
    assert dynamics._tables["epochs_seen"].dtype == torch.int16  # all counts share one dtype
    s = dynamics.signals()
    assert s["visits"].tolist() == [1, 299]
    assert s["nonfinite"].tolist() == [0, 1]
    assert s["loss"].tolist() == [5.0, 149.0]
    assert s["visits"].dtype == torch.int32  # the export dtype does not depend on the storage


def test_more_visits_in_an_epoch_than_the_packed_counts_hold_raise() -> None:
    dynamics = TrainingDynamics(num_examples=1)
    dynamics.update(step_outputs([Visit(0, 0, 1.0)] * 4096))
    assert dynamics._accumulator is not None
    with pytest.raises(RuntimeError, match=r"visited 4096 or more times in one epoch"):
        dynamics._finish_epoch(dynamics._accumulator.clone(), 0)
