"""Errors the client raises."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import requests

    from .resources import Run, Study


class ModalbenchError(Exception):
    """Base class of the client's own errors."""


class ApiError(ModalbenchError):
    """The service answered with a non-2xx status.

    The service's errors are JSON, ``{"error": {"code", "message", "field"?}}``; those are
    parsed into :attr:`code`, :attr:`message` and :attr:`field`. A body that is not in that
    shape (a proxy's HTML page, say) leaves :attr:`code` as ``None`` and puts the start of the
    text in :attr:`message`.
    """

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        field: str | None = None,
        body: dict | str | None = None,
    ) -> None:
        self.status = status
        """The HTTP status, e.g. 422."""
        self.code = code
        """The service's stable error code (``unknown_model``, ``not_found``, ...), if it gave one."""
        self.message = message
        """The service's message, or the start of the response text."""
        self.field = field
        """The request field at fault (``model``, ``learning_rate``, ``grid.epochs``), if one is."""
        self.body = body
        """The whole parsed JSON body, or the text when it was not JSON."""
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (field `{self.field}`)" if self.field else ""
        code = f" {self.code}" if self.code else ""
        return f"{self.status}{code}{where}: {self.message}"

    @classmethod
    def from_response(cls, response: requests.Response) -> ApiError:
        """Builds the error from a non-2xx response."""
        text = response.text
        try:
            body: Any = response.json()
        except (ValueError, json.JSONDecodeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            return cls(
                response.status_code,
                err.get("code"),
                str(err.get("message", "")),
                err.get("field"),
                body,
            )
        message = text.strip()[:500] or (response.reason or "")
        return cls(response.status_code, None, message, None, text)


class RunFailed(ModalbenchError):
    """A run that was waited for ended ``failed`` or ``cancelled``; :attr:`run` is the run."""

    def __init__(self, run: Run) -> None:
        self.run = run
        reason = f": {run.error}" if run.error else ""
        super().__init__(f"run {run.id} ({run.model} on {run.dataset}) {run.status}{reason}")


class StudyFailed(ModalbenchError):
    """A study that was waited for (``raise_on_failure=True``) has failed or cancelled runs."""

    def __init__(self, study: Study) -> None:
        self.study = study
        bad = [r for r in study.runs if r.status in ("failed", "cancelled")]
        super().__init__(
            f"study {study.id} ({study.name}): {len(bad)} of {len(study.runs)} runs "
            f"failed or were cancelled"
        )
