"""Data in: every item carries its example id (`WithIndex`), and streams are sharded over ranks and workers.

The first stage of the data flow. Nothing here reads scores: it only makes the ids (and the plan's
weights) travel inside each batch, where the tracker and the selections find them.
"""

from lightning_curricula.data._with_index import WithIndex
from lightning_curricula.data.streams import ShardedStream, stable_id

__all__ = ["ShardedStream", "WithIndex", "stable_id"]
