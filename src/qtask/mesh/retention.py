"""How long the coordinator keeps quality reports and decisions (FR-008): a supervised
periodic prune.

Every fidelity and link report is stored (the pinger alone writes one per node per
`ping_interval_s`: 86,400 a day per node at the default 1 s), so without a bound the table
grows for as long as the coordinator runs. Each iteration deletes, per node, the reports
received more than `quality_keep_s` ago and all but the newest `quality_keep_rows`; the loop
(qtask.runtime.supervision.SupervisedLoop) logs and backs off on errors and shows in /ready.

Each planning decision stores the registry snapshot it was made on (one row per fragment
attempt, a few KiB each), so the same iteration deletes the decisions older than
`quality_keep_s` of jobs that ended (or are gone); a live job's decisions stay however old.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from qtask.logs import get_logger
from qtask.mesh.config import CoordinatorSettings
from qtask.runtime.supervision import SupervisedLoop

log = get_logger("mesh.retention")


class QualityRecords(Protocol):
    """What the prune needs of the database (qtask.mesh.store.MeshStore)."""

    async def prune_quality(self, older_than: float, keep_rows: int) -> int: ...

    async def prune_decisions(self, older_than: float) -> int: ...


class QualityRetention:
    """One prune per iteration, with the settings' bounds."""

    def __init__(
        self,
        store: QualityRecords,
        settings: CoordinatorSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._keep_s = settings.quality_keep_s
        self._keep_rows = settings.quality_keep_rows
        self._interval = settings.quality_prune_interval_s
        self._clock = clock
        self.removed = 0  # in all, since start

    async def iteration(self) -> None:
        """Delete what is past the bounds; log how much when anything was."""
        older_than = self._clock() - self._keep_s
        removed = await self._store.prune_quality(older_than, self._keep_rows)
        decisions = await self._store.prune_decisions(older_than)
        self.removed += removed + decisions
        if removed or decisions:
            log.info("mesh_quality_pruned", removed=removed, decisions=decisions,
                     keep_s=self._keep_s, keep_rows=self._keep_rows)  # fmt: skip

    def loop(self) -> SupervisedLoop:
        """The supervised loop that runs an iteration every `quality_prune_interval_s`."""
        return SupervisedLoop(
            "mesh_quality_retention",
            self.iteration,
            interval=self._interval + 30.0,  # a prune of a large table may take a while
            pause=self._interval,
        )
