"""The in-process transport: every user's device runs in this process, no Flower in between.

What the membership audit, the poisoning study and tuning use: the same device code as a
simulation node (:class:`~fedrec.nodes.block.BlockNode`), the same sampler, server rule and round
loop (:func:`~fedrec.federation.loop.run_rounds`). Each user's own update reaches the server rule
(a robust ``defense`` needs them, and an audit observes them). ``before_train`` runs before the
devices train (an audit's counterfactual rounds start from the same states); ``poison`` may add
crafted replies (malicious clients) to the honest ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedrec.nodes.block import BlockNode, MemoryKeeper, UserSource
from fedrec.protocol.replies import NodeReply
from fedrec.training.state import DeviceState

Arrays = dict[str, np.ndarray]
Poisoner = Callable[[int, Arrays, list[NodeReply]], list[NodeReply]]
BeforeTrain = Callable[[int, Arrays], None]


class InProcessTransport:
    """Users ``0..N-1`` are the positions of ``source``; one reply per user. ``states`` (by user
    key) is where the devices keep their states; pass a study's own dict to share it.
    ``split_replies=False``: one reply for all users (one node's sum), when no one needs each
    user's own update and the per-user replies would only cost memory (ALS statistics)."""

    def __init__(
        self,
        source: UserSource,
        *,
        states: dict[int, DeviceState] | None = None,
        trainer: str = "closed_form",
        chunk_size: int = 0,
        before_train: BeforeTrain | None = None,
        poison: Poisoner | None = None,
        split_replies: bool = True,
    ) -> None:
        self.keeper = MemoryKeeper(states)
        self.node = BlockNode(source, self.keeper, trainer=trainer, chunk_size=chunk_size)
        self.population = len(source)
        self.before_train, self.poison = before_train, poison
        self.split_replies = split_replies

    @property
    def states(self) -> dict[int, DeviceState]:
        return self.keeper.states

    def train(self, server_round: int, users: np.ndarray, arrays: Arrays, config: dict):
        if self.before_train is not None:
            self.before_train(server_round, arrays)
        replies = self.node.train(users.tolist(), arrays, config, split_replies=self.split_replies)
        if self.poison is not None:
            replies = self.poison(server_round, arrays, replies)
        return replies

    def evaluate(self, server_round: int, users: np.ndarray, arrays: Arrays, config: dict):
        return self.node.evaluate(users.tolist(), arrays, config)
