"""The errors tokenward raises, and where they came from.

Every failure a person can act on is one of these, so the CLI and the webhook
map classes, not strings, to exit codes and HTTP statuses::

    TokenwardError
    ├── InputError              something a user or an attacker supplied is wrong
    │   ├── ExportError         an exported log file (file, line)
    │   ├── PlaybookError       a playbook definition (file, line, key)
    │   ├── SettingsError       the settings file or environment (file, key)
    │   ├── ScenarioError       a tabletop scenario (file, line, key)
    │   └── IdentityError       an identity refused by its shape
    ├── QueryError              a hunt or correlation query did not complete
    ├── ConnectorError          an outside service refused or failed
    │   ├── AuthenticationFailed   no token, or the token was refused (401)
    │   ├── PermissionDenied       the identity lacks a permission (403)
    │   ├── NotFound               the target does not exist (404)
    │   ├── BadRequest             the request was refused as invalid (400)
    │   ├── Throttled              429 past the retry budget
    │   └── ServiceUnavailable     5xx, timeouts and transport failures
    │       └── TimedOut           the service or the client stopped waiting
    ├── GuardrailRefused        an action a guardrail forbids at execution time
    └── AuditError              the audit log cannot be written or does not verify
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where in a file a problem is: any of the parts may be unknown."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        if self.file is None and self.line is None and self.key:
            # A setting checked once loaded: its key is where it is.
            return f"at {self.key}"
        place = self.file or "<input>"
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        if self.key:
            place += f" (at {self.key})"
        return place


class TokenwardError(Exception):
    """The root of every error tokenward raises on purpose."""


class InputError(TokenwardError):
    """Something supplied from outside is wrong; the message says what and where."""

    def __init__(self, message: str, *, source: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source

    def __str__(self) -> str:
        if self.source is None:
            return self.message
        return f"{self.source}: {self.message}"


class ExportError(InputError):
    """An exported log file cannot be read as any shape tokenward knows."""


class PlaybookError(InputError):
    """A playbook definition is invalid."""


class SettingsError(InputError):
    """The settings are invalid or contradict each other."""


class ScenarioError(InputError):
    """A tabletop scenario is invalid."""


class IdentityError(InputError):
    """An identity value (UPN, object id, IP) does not have the shape it claims."""


class QueryError(TokenwardError):
    """A query did not complete; no decision may rest on its absence of rows."""

    def __init__(self, message: str, *, query: str | None = None) -> None:
        super().__init__(message)
        self.query = query


class ConnectorError(TokenwardError):
    """An outside service refused or failed a call.

    ``status``, ``code`` and ``request_id`` carry what the service said, so the
    audit can record it; none of them ever holds a token or a response body.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        client_request_id: str | None = None,
        retry_after: float | None = None,
        service_message: str | None = None,
        service_date: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.retry_after = retry_after
        # The service's own ``error.message`` (often empty: B14) and innerError date.
        self.service_message = service_message
        self.service_date = service_date

    @property
    def error_class(self) -> str:
        return _ERROR_CLASSES.get(type(self), "error")


class AuthenticationFailed(ConnectorError):
    """No token could be obtained, or the service refused it."""


class PermissionDenied(ConnectorError):
    """The identity lacks a permission or role for this call."""


class NotFound(ConnectorError):
    """The target of the call does not exist."""


class BadRequest(ConnectorError):
    """The service refused the request as invalid; retrying cannot help."""


class Throttled(ConnectorError):
    """The service throttled the call past the retry budget."""

    retryable = True


class ServiceUnavailable(ConnectorError):
    """A 5xx, a timeout or a transport failure."""

    retryable = True


class TimedOut(ServiceUnavailable):
    """The service (504, GatewayTimeout) or the client (read timeout) stopped waiting.

    Retrying the same heavy query as it stands usually times out again; query
    sources therefore re-run it over a narrower window instead.
    """


class GuardrailRefused(TokenwardError):
    """A guardrail forbids this action at execution time."""


class AuditError(TokenwardError):
    """The audit log cannot be written, or its chain does not verify."""


_ERROR_CLASSES: dict[type[ConnectorError], str] = {
    AuthenticationFailed: "auth",
    PermissionDenied: "auth",
    NotFound: "not_found",
    BadRequest: "bad_request",
    Throttled: "throttled",
    ServiceUnavailable: "transient",
    TimedOut: "timeout",
}
