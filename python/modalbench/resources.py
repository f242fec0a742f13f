"""The service's runs and studies as Python objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Statuses after which a run no longer changes.
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
#: Statuses of a run that is still to end (``interrupted`` runs are run again).
ACTIVE_STATUSES = ("queued", "running", "interrupted")


@dataclass
class Run:
    """A run as ``GET /api/v1/runs/{id}`` answers it.

    Every field of the answer is kept in :attr:`raw`; the usual ones are attributes.
    """

    id: int
    status: str
    model: str
    dataset: str
    config: dict[str, Any] = field(repr=False)
    """Every option's value, defaults included."""
    progress: float | None = None
    """Fraction of training steps done (0 to 1), once the run has started."""
    summary: dict[str, Any] | None = field(default=None, repr=False)
    """The test split's scores (``accuracy``, ``f1``, ``auroc``, ``loss``) and ``cost``, once
    it succeeded."""
    error: str | None = None
    priority: int = 0
    attempts: int = 0
    device: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    study_id: int | None = None
    grid: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Run:
        """A run from the API's JSON object."""
        return cls(
            id=d["id"],
            status=d["status"],
            model=d["model"],
            dataset=d["dataset"],
            config=d.get("config") or {},
            progress=d.get("progress"),
            summary=d.get("summary"),
            error=d.get("error"),
            priority=d.get("priority", 0),
            attempts=d.get("attempts", 0),
            device=d.get("device"),
            created_at=d.get("created_at"),
            started_at=d.get("started_at"),
            finished_at=d.get("finished_at"),
            study_id=d.get("study_id"),
            grid=d.get("grid"),
            raw=d,
        )

    @property
    def done(self) -> bool:
        """Whether the run has ended (succeeded, failed or cancelled)."""
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        """Whether the run ended well."""
        return self.status == "succeeded"


@dataclass
class Study:
    """A study: its request (:attr:`spec`), run counts per status and, where the answer
    carries them, its runs."""

    id: int
    name: str
    spec: dict[str, Any] = field(repr=False)
    """The request it was made from (``models``, ``datasets``, ``seeds``, ``grid``, ...)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Runs per status: ``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``,
    ``interrupted``."""
    runs: list[Run] = field(default_factory=list, repr=False)
    created_at: str | None = None
    cancelled_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Study:
        """A study from the API's JSON object."""
        return cls(
            id=d["id"],
            name=d["name"],
            spec=d.get("spec") or {},
            counts=d.get("counts") or {},
            runs=[Run.from_json(r) for r in d.get("runs") or []],
            created_at=d.get("created_at"),
            cancelled_at=d.get("cancelled_at"),
            raw=d,
        )

    @property
    def done(self) -> bool:
        """Whether every run has ended (judged from :attr:`counts`)."""
        return not any(self.counts.get(s, 0) for s in ACTIVE_STATUSES)
