"""The dry-run responder: shows every request a run would send, sends none.

It holds no client and imports nothing that could open a connection, so a
dry-run cannot write by construction, not by a flag checked at the last moment.
"""

from __future__ import annotations

from collections.abc import Sequence

from playbooks.models import ActionResult, ActionStatus, Gate, PlannedAction
from playbooks.ports import ExecutionContext

_STATUS = {
    Gate.UNATTENDED: ActionStatus.WOULD_SEND,
    Gate.APPROVAL: ActionStatus.AWAITING_APPROVAL,
    Gate.BLOCKED: ActionStatus.BLOCKED,
}


class DryRunResponder:
    """A :class:`~playbooks.ports.Responder` that records and never sends."""

    description = "dry-run: requests are built and shown, none is sent"
    sends_requests = False

    async def execute(
        self, actions: Sequence[PlannedAction], context: ExecutionContext
    ) -> list[ActionResult]:
        results = []
        for action in actions:
            status = _STATUS[action.gate]
            detail = {
                ActionStatus.WOULD_SEND: "would be sent in auto mode",
                ActionStatus.AWAITING_APPROVAL: "would wait for an approver",
                ActionStatus.BLOCKED: "never sent: "
                + "; ".join(d.detail for d in action.decisions if d.gate is Gate.BLOCKED),
            }[status]
            results.append(ActionResult(action_id=action.id, status=status, detail=detail))
        return results
