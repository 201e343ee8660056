"""The names of the vision recipe's data sources; standard library only, so the CLI checks them instantly."""

from __future__ import annotations

__all__ = ["LOCAL_DATASETS", "check_dataset_name", "is_hub_name"]

#: The datasets that need no network, by the names ``--data.dataset`` accepts.
LOCAL_DATASETS = ("embedded", "fashion_mnist", "digits")


def is_hub_name(name: str) -> bool:
    """Whether ``name`` is a Hugging Face Hub id (``owner/name``) rather than a local dataset.

    Example:
        >>> is_hub_name("uoft-cs/cifar10"), is_hub_name("embedded")
        (True, False)
    """
    return "/" in name


def check_dataset_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a local dataset or a Hub id.

    Example:
        >>> check_dataset_name("cifar10")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Unknown dataset 'cifar10'; valid: embedded, fashion_mnist, digits, or a Hugging Face Hub id ...
    """
    if name not in LOCAL_DATASETS and not is_hub_name(name):
        raise ValueError(
            f"Unknown dataset {name!r}; valid: {', '.join(LOCAL_DATASETS)}, or a Hugging Face Hub id with a '/' "
            "such as uoft-cs/cifar10."
        )
