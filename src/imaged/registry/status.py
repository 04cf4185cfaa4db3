"""A registry's non-success answer as a domain error: the status code decides the class, the
distribution error body (bounded, printable) adds its detail, and no message carries a secret."""

from __future__ import annotations

from imaged.errors import (
    FailedPrecondition,
    ImagedError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from imaged.oci import jsondoc
from imaged.registry.auth import ANONYMOUS, Credentials
from imaged.registry.http import MAX_ERROR_BODY, Response, shown
from imaged.registry.reference import Reference


def registry_error(body: bytes) -> str:
    """`CODE: message` from a distribution error body, bounded and printable, or ''."""
    try:
        doc = jsondoc.loads(body[:MAX_ERROR_BODY])
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code, message = errors[0].get("code", ""), errors[0].get("message", "")
            text = f"{code}: {message}" if code and message else str(code or message)
            return shown(text)
    except (ValueError, UnicodeDecodeError):
        pass
    return ""


def status_error(
    r: Response | int, host: str, ref: Reference, missing: str, creds: Credentials
) -> ImagedError:
    """The error for a non-success answer of `host`; `missing` describes the object for 404, and
    `creds` what was sent, for 401."""
    status = r if isinstance(r, int) else r.status
    detail = registry_error(r.body) if isinstance(r, Response) else ""
    suffix = f" ({detail})" if detail else ""
    if status == 404:
        return NotFound(f"{missing} not found on {host}{suffix}")
    if status == 401:
        if creds is ANONYMOUS:
            return Unauthenticated(
                f"{host} requires authentication for repository {ref.path}; no credentials "
                f"are configured for {ref.domain}{suffix}"
            )
        who = f"user {creds.username!r}" if creds.username else "the configured identity token"
        return Unauthenticated(f"{host} rejected {who} for repository {ref.path}{suffix}")
    if status == 403:
        return PermissionDenied(f"{host} denied access to repository {ref.path}{suffix}")
    if status == 429:
        return Unavailable(f"{host} is rate limiting requests (HTTP 429){suffix}")
    if status >= 500:
        return Unavailable(f"{host} failed with HTTP {status}{suffix}")
    if status == 400:
        return InvalidArgument(f"{host} rejected the request (HTTP 400){suffix}")
    return FailedPrecondition(f"{host} answered HTTP {status}{suffix}")
