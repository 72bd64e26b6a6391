"""What-if: the same run under a changed playbook, compared finding by finding.

A tabletop team asks "what if high started at 60?" or "what if a click were
worth 30?". The face runs the exercise twice, with the playbook as it is and
with the overrides, and :func:`compare_runs` says which findings change score
or tier and which actions appear or disappear. Pure: two reports in, data out.

Findings are matched by id, which comes from the user and the sign-in session,
so the same sign-ins give the same ids under any weights or thresholds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from playbooks.errors import Location
from playbooks.models import (
    ActionKind,
    ActionStatus,
    Finding,
    Model,
    RunReport,
    Tier,
    UtcDatetime,
)
from playbooks.playbook import AppliedOverride


class Thresholds(Model):
    """The score at which a finding becomes high or medium."""

    high: int
    medium: int

    def describe(self) -> str:
        return f"high ≥ {self.high}, medium ≥ {self.medium}"


class OverrideShown(Model):
    """One changed playbook key, its value before and after, and who asked."""

    key: str
    before: str
    after: str
    source: str


class FindingChange(Model):
    """One finding under both playbooks; a side is ``None`` where it is absent."""

    finding_id: str
    user_principal_name: str
    sign_in_time: UtcDatetime
    app: str
    score_before: int | None
    tier_before: Tier | None
    score_after: int | None
    tier_after: Tier | None

    @property
    def tier_changed(self) -> bool:
        return self.tier_before != self.tier_after

    @property
    def score_changed(self) -> bool:
        return self.score_before != self.score_after

    @property
    def direction(self) -> str:
        """``up``, ``down`` or ``same``, by tier."""
        before = self.tier_before.rank if self.tier_before is not None else -1
        after = self.tier_after.rank if self.tier_after is not None else -1
        return "up" if after > before else "down" if after < before else "same"


class PlannedItem(Model):
    """One action on one user, and what the run did with it."""

    action: ActionKind
    status: ActionStatus


class UserActions(Model):
    """The actions planned for one user under both playbooks."""

    user_principal_name: str
    before: tuple[PlannedItem, ...]
    after: tuple[PlannedItem, ...]

    @property
    def added(self) -> tuple[PlannedItem, ...]:
        return tuple(item for item in self.after if item not in self.before)

    @property
    def removed(self) -> tuple[PlannedItem, ...]:
        return tuple(item for item in self.before if item not in self.after)

    @property
    def changed(self) -> bool:
        return self.before != self.after


class WhatIf(Model):
    """How a run changes under overrides, against the unchanged playbook."""

    overrides: tuple[OverrideShown, ...]
    thresholds_before: Thresholds
    thresholds_after: Thresholds
    findings: tuple[FindingChange, ...]
    actions: tuple[UserActions, ...]
    # How each run meets the scenario's expected outcome; None outside exercises.
    expected_before: tuple[str, ...] | None = None
    expected_after: tuple[str, ...] | None = None

    @property
    def tier_changes(self) -> tuple[FindingChange, ...]:
        return tuple(change for change in self.findings if change.tier_changed)

    @property
    def action_changes(self) -> tuple[UserActions, ...]:
        return tuple(change for change in self.actions if change.changed)

    def for_finding(self, finding_id: str) -> FindingChange | None:
        for change in self.findings:
            if change.finding_id == finding_id:
                return change
        return None

    def summary(self) -> str:
        """One sentence: how many findings change tier, and how."""
        moved = self.tier_changes
        if not moved:
            scores = sum(1 for change in self.findings if change.score_changed)
            if scores:
                return f"No finding changes tier; {scores} of {len(self.findings)} change score."
            return "No finding changes tier or score."
        up = sum(1 for change in moved if change.direction == "up")
        down = len(moved) - up
        parts = [f"{up} up"] if up else []
        parts += [f"{down} down"] if down else []
        return f"{len(moved)} of {len(self.findings)} finding(s) change tier ({', '.join(parts)})."


def compare_runs(
    before: RunReport,
    after: RunReport,
    *,
    overrides: Sequence[AppliedOverride],
    thresholds_before: Thresholds,
    thresholds_after: Thresholds,
    expected_before: Sequence[str] | None = None,
    expected_after: Sequence[str] | None = None,
) -> WhatIf:
    """The differences between a run and the same run under *overrides*."""
    old = {finding.id: finding for finding in before.findings}
    new = {finding.id: finding for finding in after.findings}
    order = list(old) + [key for key in new if key not in old]
    findings = tuple(_finding_change(key, old.get(key), new.get(key)) for key in order)

    old_actions, new_actions = _actions_by_user(before), _actions_by_user(after)
    users = list(old_actions) + [user for user in new_actions if user not in old_actions]
    actions = tuple(
        UserActions(
            user_principal_name=user,
            before=old_actions.get(user, ()),
            after=new_actions.get(user, ()),
        )
        for user in users
    )
    return WhatIf(
        overrides=tuple(_shown(override) for override in overrides),
        thresholds_before=thresholds_before,
        thresholds_after=thresholds_after,
        findings=findings,
        actions=actions,
        expected_before=tuple(expected_before) if expected_before is not None else None,
        expected_after=tuple(expected_after) if expected_after is not None else None,
    )


def _finding_change(key: str, old: Finding | None, new: Finding | None) -> FindingChange:
    either = new or old
    assert either is not None
    return FindingChange(
        finding_id=key,
        user_principal_name=either.user_principal_name,
        sign_in_time=either.sign_in_time,
        app=either.primary.app_display_name or either.primary.app_id,
        score_before=old.score if old else None,
        tier_before=old.tier if old else None,
        score_after=new.score if new else None,
        tier_after=new.tier if new else None,
    )


def _actions_by_user(report: RunReport) -> dict[str, tuple[PlannedItem, ...]]:
    found: dict[str, list[PlannedItem]] = {}
    for action in report.actions:
        for target in action.targets:
            item = PlannedItem(action=action.action, status=action.status)
            found.setdefault(target.user_principal_name.lower(), []).append(item)
    for finding in report.findings:
        found.setdefault(finding.user_principal_name.lower(), [])
    return {user: tuple(items) for user, items in found.items()}


def _shown(override: AppliedOverride) -> OverrideShown:
    return OverrideShown(
        key=override.key,
        before=_text(override.before),
        after=_text(override.after),
        source=_where(override.source),
    )


def _where(source: Location) -> str:
    # "--set", or "tuned.yaml:3": the key is shown beside it already.
    place = source.file or "<input>"
    return f"{place}:{source.line}" if source.line is not None else place


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)
