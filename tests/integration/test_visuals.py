"""`DynamicsVisuals` on a real CPU `Trainer`: histograms, data map and the hardest examples with their labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import ClassificationDataset, Classifier, LossOnlyClassifier, make_trainer, train_loader
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_curricula import DynamicsVisuals, TrainingDynamics

SIZE = 37


def _events(root: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(root.rglob("events.out.tfevents.*"))
    assert len(files) == 1, files
    events = EventAccumulator(str(files[0]), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    return events


def _table(events: Any, tag: str) -> list[list[str]]:
    text = events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()
    lines = text.splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_histograms_data_map_and_hardest_examples_with_labels_and_predictions(tmp_path: Path) -> None:
    dataset = ClassificationDataset(SIZE, shape=(1, 4, 4))  # image-like items
    dynamics = TrainingDynamics()
    visuals = DynamicsVisuals(plot_every_n_epochs=1, num_hardest=4, hardest_by="el2n")
    model = Classifier(num_features=16, record=True)
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[dynamics, visuals], logger=TensorBoardLogger(tmp_path))
    trainer.fit(model, train_loader(dataset))

    events = _events(tmp_path)
    tags = events.Tags()
    for scalar in ("seen_fraction", "mean_loss", "kept_fraction", "learned_fraction", "forgetting_events"):
        assert len(events.Scalars(f"dynamics/{scalar}")) == 2, scalar  # one per epoch
    for signal in ("loss", "loss_ema", "el2n", "margin", "aum", "confidence", "variability", "correctness"):
        assert f"dynamics/{signal}" in tags["histograms"], signal
    assert "dynamics/index" not in tags["histograms"]
    assert len(events.Images("dynamics/data_map")) == 2
    assert len(events.Images("dynamics/hardest_by_el2n")) == 2  # the captioned grid, every plotting epoch
    header, *rows = _table(events, "dynamics/hardest_by_el2n")
    assert header == ["id", "el2n", "label", "predicted", "text"]
    hardest = dynamics.select("el2n", k=4).tolist()
    assert [int(row[0]) for row in rows] == hardest  # hardest first
    last_visits = {visit.index: visit for visit in model.visits if visit.epoch == 1}
    for row in rows:
        index = int(row[0])
        visit = last_visits[index]
        assert float(row[1]) == pytest.approx(float(dynamics.signals()["el2n"][index]), rel=1e-3)
        assert int(row[2]) == int(dataset.y[index]) == visit.target  # the given label
        assert visit.logits is not None
        assert int(row[3]) == max(range(3), key=lambda c: visit.logits[c])  # its arg-max at the last visit
    assert visuals.prediction_bytes_per_example == 1  # 3 classes: one byte per example


def test_loss_only_shows_no_prediction_and_no_data_map(tmp_path: Path) -> None:
    visuals = DynamicsVisuals(plot_every_n_epochs=1, num_hardest=3)
    trainer = make_trainer(
        tmp_path, max_epochs=1, callbacks=[TrainingDynamics(), visuals], logger=TensorBoardLogger(tmp_path)
    )
    trainer.fit(LossOnlyClassifier(), train_loader(ClassificationDataset(SIZE)))
    events = _events(tmp_path)
    assert "dynamics/data_map" not in events.Tags()["images"]
    _, *rows = _table(events, "dynamics/hardest_by_loss")
    assert len(rows) == 3
    assert all(row[3] == "—" for row in rows)
    assert visuals.prediction_bytes_per_example == 0


def test_no_plots_and_no_histograms_when_switched_off(tmp_path: Path) -> None:
    visuals = DynamicsVisuals(log_histograms=False, plot_every_n_epochs=0)
    trainer = make_trainer(
        tmp_path, max_epochs=1, callbacks=[TrainingDynamics(), visuals], logger=TensorBoardLogger(tmp_path)
    )
    trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE)))
    tags = _events(tmp_path).Tags()
    assert "dynamics/mean_loss" in tags["scalars"]
    assert tags["histograms"] == []
    assert tags["images"] == []
    assert visuals.prediction_bytes_per_example == 0  # nothing to draw, so no predictions are kept


def test_the_tracker_alone_draws_nothing(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[TrainingDynamics()], logger=TensorBoardLogger(tmp_path))
    trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE)))
    tags = _events(tmp_path).Tags()
    assert "dynamics/mean_loss" in tags["scalars"]
    assert tags["histograms"] == []
    assert tags["images"] == []


def test_csv_logger_warns_that_it_gets_scalars_only(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[TrainingDynamics(), DynamicsVisuals()], logger=logger)
    with pytest.warns(UserWarning, match=r"only to TensorBoardLogger; \['CSVLogger'\] get none of them"):
        trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE)))
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "dynamics/mean_loss" in header


def test_setup_needs_a_tracker_listed_first() -> None:
    with pytest.raises(ValueError, match=r"the Trainer has none"):
        make_trainer(max_epochs=1, callbacks=[DynamicsVisuals()]).fit(
            Classifier(), train_loader(ClassificationDataset(SIZE))
        )
    with pytest.raises(ValueError, match=r"must come after its TrainingDynamics"):
        make_trainer(max_epochs=1, callbacks=[DynamicsVisuals(), TrainingDynamics()]).fit(
            Classifier(), train_loader(ClassificationDataset(SIZE))
        )
    with pytest.raises(ValueError, match=r"is sharded over the ranks: export its shards"):
        make_trainer(max_epochs=1, callbacks=[TrainingDynamics(sharded=True), DynamicsVisuals()]).fit(
            Classifier(), train_loader(ClassificationDataset(SIZE))
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"plot_every_n_epochs": -1}, r"plot_every_n_epochs and num_hardest must be >= 0, got -1 and 16"),
        ({"num_hardest": -2}, r"plot_every_n_epochs and num_hardest must be >= 0, got 5 and -2"),
        ({"hardest_by": "visits"}, r"hardest_by must be one of \[.*'el2n'.*\], got 'visits'"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicsVisuals(**kwargs)


def test_class_names_in_the_table(tmp_path: Path) -> None:
    names = ["cat", "dog", "bird"]
    visuals = DynamicsVisuals(plot_every_n_epochs=1, num_hardest=2, class_names=names)
    trainer = make_trainer(
        tmp_path, max_epochs=1, callbacks=[TrainingDynamics(), visuals], logger=TensorBoardLogger(tmp_path)
    )
    trainer.fit(Classifier(), train_loader(ClassificationDataset(SIZE)))
    _, *rows = _table(_events(tmp_path), "dynamics/hardest_by_loss")
    for row in rows:
        assert any(row[2].startswith(f"{name} (") for name in names)
        assert any(row[3].startswith(f"{name} (") for name in names)
