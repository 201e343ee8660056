"""`PolicyBinding`: the policy a `CurriculumSampler` runs, and its state in the tracker's checkpoint.

The sampler is re-created every epoch and is not checkpointed; the `TrainingDynamics` tracker it is
bound to is (a Lightning callback). So the tracker keeps one `PolicyBinding`: its `state_dict` is the
bound policy's own state (with its class name and the run's ``num_epochs``), and a state loaded on
resume (``Callback.load_state_dict`` runs before ``train_dataloader()``) waits there until the next
sampler binds its policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["BoundPolicy", "PolicyBinding"]

STATE_VERSION = 1


class BoundPolicy(Protocol):
    """What the tracker needs of a policy to checkpoint it (`lightning_curricula.policies.Policy` has it all)."""

    @property
    def needs_num_epochs(self) -> bool:
        """Whether its plans depend on the run's ``num_epochs``."""

    def state_dict(self) -> dict[str, Any]:
        """Its own state: tensors, numbers and a ``version``; ``{}`` when stateless."""

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output."""


class PolicyBinding:
    """The policy bound to a tracker, and a loaded policy state waiting for it.

    Examples:
        >>> from lightning_curricula import StaticPruning
        >>> binding = PolicyBinding()
        >>> binding.bind(StaticPruning(), num_epochs=4)
        >>> binding.state_dict()["policy"], binding.state_dict()["num_epochs"]
        ('StaticPruning', 4)
    """

    def __init__(self) -> None:
        self.policy: BoundPolicy | None = None
        self.num_epochs: int | None = None
        self._loaded: Mapping[str, Any] | None = None

    def bind(self, policy: BoundPolicy, *, num_epochs: int | None) -> None:
        """Bind ``policy``: give it a state loaded from a checkpoint, or the state of the policy it replaces.

        Raises:
            ValueError: the loaded state is another policy's, or its run had another ``num_epochs``
                and the policy's plans depend on it (``needs_num_epochs``: pacing, annealing, budgets).
        """
        if self._loaded is not None:
            self._restore(policy, self._loaded, num_epochs)
            self._loaded = None
        elif self.policy is not None and self.policy is not policy and type(self.policy) is type(policy):
            policy.load_state_dict(self.policy.state_dict())  # a new policy object each epoch keeps the state
        self.policy, self.num_epochs = policy, num_epochs

    def state_dict(self) -> dict[str, Any] | None:
        """The bound policy's state: ``version``, ``policy`` (class name), ``num_epochs``, ``state``."""
        if self.policy is None:
            return dict(self._loaded) if self._loaded is not None else None
        return {
            "version": STATE_VERSION,
            "policy": type(self.policy).__name__,
            "num_epochs": self.num_epochs,
            "state": self.policy.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Keep ``state`` for the next `bind` (or give it to the policy already bound)."""
        if state is not None and state.get("version") != STATE_VERSION:
            raise ValueError(
                f"The checkpoint's policy state has version {state.get('version')!r}; this release reads "
                f"version {STATE_VERSION}."
            )
        if state is not None and self.policy is not None:
            self._restore(self.policy, state, self.num_epochs)
            return
        self._loaded = state

    @staticmethod
    def _restore(policy: BoundPolicy, state: Mapping[str, Any], num_epochs: int | None) -> None:
        name = type(policy).__name__
        if state["policy"] != name:
            raise ValueError(
                f"The checkpoint holds the state of a {state['policy']} policy; this run's policy is {name}."
            )
        saved = state["num_epochs"]
        if policy.needs_num_epochs and saved != num_epochs:
            raise ValueError(
                f"Cannot resume {name} with max_epochs={num_epochs}: the checkpoint's run has max_epochs={saved}, "
                f"and {name}'s plans (pacing, annealing or budget) depend on it. Resume with max_epochs={saved}, "
                "or start a new run."
            )
        policy.load_state_dict(state["state"])
