"""How a retraining run can end other than with a summary."""

from __future__ import annotations


class RetrainBusy(RuntimeError):
    """Another retraining run holds the job lock."""


class RetrainFailed(RuntimeError):
    """A run started but did not finish; it is recorded as failed (or cancelled) with its log."""

    def __init__(self, message: str, run_id: int, log_path: str):
        super().__init__(message)
        self.run_id, self.log_path = run_id, log_path


class RetrainCancelled(BaseException):
    """Raised in the job process on SIGTERM so the run is recorded as cancelled, not left running."""
