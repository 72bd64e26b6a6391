"""Placeholder replaced below."""
from playbooks.models import RunReport
from playbooks.reports import ReportContext


def to_html(report: RunReport, *, context: ReportContext | None = None) -> str:
    return "<html></html>"
