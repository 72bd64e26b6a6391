"""Exported logs: shapes, the typed loader, and the local KQL engine."""
