"""Passwords in storage and tracking URLs: what of a URL may be printed, logged, tagged or stored.

A team's URLs carry database passwords (``postgresql://user:PASSWORD@host/db``). Whatever zsclust
shows or records (messages, MLflow params, tags and artifacts, Optuna user attributes, reports) goes
through :func:`redact`, which drops the password and keeps everything else, so the result is still a
working URL wherever the password comes from elsewhere: libpq's ``PGPASSWORD`` or ``~/.pgpass`` for
PostgreSQL, or the full URL given again (``--storage``, ``MLFLOW_TRACKING_URI``), which
:func:`with_password_from` puts back. A password never goes on a command line (``ps`` shows those to
every user): child processes get URLs through their environment. No imports beyond the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["has_password", "password_of", "redact", "redact_config", "redact_text", "with_password_from"]

# Query parameters that carry a secret (``?password=...`` for some drivers, tokens for object stores).
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "secret", "token", "access_token", "api_key", "apikey",
                               "sig", "x-amz-signature", "x-amz-security-token"})
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


def _split(url: str):
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 host: treated as text without a URL in it
        return None
    return parts if parts.scheme and "://" in url else None


def password_of(url: str) -> str | None:
    """The password in ``url`` (as written, percent-encoded or not), or None."""
    parts = _split(url) if isinstance(url, str) else None
    if parts is None:
        return None
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        return userinfo.split(":", 1)[1] or None
    secrets = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_QUERY_KEYS and v]
    return secrets[0] if secrets else None


def has_password(url: str) -> bool:
    return password_of(url) is not None


def redact(url: str) -> str:
    """``url`` without its password (``scheme://user@host/db``) and without secret query parameters.

    Anything that is not a URL with credentials comes back unchanged, so any string may be passed.
    """
    parts = _split(url) if isinstance(url, str) else None
    if parts is None:
        return url
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hostport}" if user else hostport
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if k.lower() not in SECRET_QUERY_KEYS]
        if len(kept) != len(pairs):
            query = urlencode(kept)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, *urls: str) -> str:
    """``text`` (an error message, a log line) with every URL in it redacted and the passwords of ``urls``
    masked wherever else they appear (a driver may quote one on its own)."""
    if not isinstance(text, str):
        return text
    out = _URL.sub(lambda m: redact(m.group(0)), text)
    for url in urls:
        secret = password_of(url) if isinstance(url, str) else None
        if secret:
            for form in {secret, unquote(secret)}:
                if len(form) >= 3:  # masking "a" would garble the text without hiding anything
                    out = out.replace(form, "***")
    return out


def redact_config(obj: Any) -> Any:
    """A copy of a config (nested dicts and lists, e.g. ``OmegaConf.to_container``) with every URL redacted."""
    if isinstance(obj, Mapping):
        return {k: redact_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_config(v) for v in obj)
    if isinstance(obj, str) and "://" in obj:
        return redact_text(obj)
    return obj


def with_password_from(url: str | None, candidates: Iterable[str | None]) -> str | None:
    """``url`` as stored (redacted), with its password back from the first candidate naming the same place.

    A stored config keeps ``postgresql://user@host/db``; the same URL given in full on this machine
    (``--storage``, ``$MLFLOW_TRACKING_URI``) is used instead. Without one, ``url`` is returned as it is
    (libpq then reads ``PGPASSWORD`` or ``~/.pgpass``).
    """
    if not url or has_password(url):
        return url
    for candidate in candidates:
        if candidate and has_password(candidate) and redact(candidate) == redact(url):
            return candidate
    return url
