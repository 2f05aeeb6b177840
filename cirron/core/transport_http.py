"""The platform's ingest protocol for one batch: blobs, the POST, the 413 split, the ledger.

:class:`Uploader` is synchronous and knows nothing of threads; the ``http`` transport's sender
thread and ``cirron spool flush`` both drive it. Each call returns an :class:`Outcome` saying
whether the batch was acknowledged (and recorded in the :class:`~cirron.core.ledger.Ledger`),
should be retried later, was rejected for good, or hit an authentication failure.

The API key lives only inside a closure of :class:`_BearerAuth`; it is never an attribute, never
in a repr, and is scrubbed from every error string this module produces.

>>> policy = RetryPolicy(base=0.0, cap=0.0)
>>> policy.delay(attempt=3, retry_after=None)
0.0
>>> parse_retry_after("7")
7.0
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import requests

from cirron.core.ledger import Ledger

__all__ = [
    "GZIP_THRESHOLD",
    "Outcome",
    "RetryPolicy",
    "Uploader",
    "encode_body",
    "parse_retry_after",
    "split_batch",
    "split_id",
]

logger = logging.getLogger("cirron")

GZIP_THRESHOLD = 1024  # bytes of JSON above which the body is gzip-compressed
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_FAILURES = frozenset({401, 403})

Kind = Literal["sent", "retry", "failed", "paused", "gone"]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff and timeouts of the http transport; tests inject small numbers.

    ``delay`` is exponential backoff with full jitter, unless the server sent ``Retry-After``,
    which is honoured up to ``retry_after_cap`` seconds.
    """

    base: float = 0.5
    cap: float = 30.0
    retry_after_cap: float = 60.0
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.retry_after_cap))
        ceiling = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        return ceiling * self.rng()


@dataclass(frozen=True)
class Outcome:
    """What happened to one batch. ``kind``: sent / retry / failed / paused / gone (file vanished)."""

    kind: Kind
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    attempts: int = 0  # HTTP requests made, for the ``batches_retried`` bookkeeping


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def encode_body(batch: dict[str, Any]) -> tuple[bytes, str]:
    """The request body and its ``Content-Encoding``: gzip above :data:`GZIP_THRESHOLD` bytes."""
    raw = json.dumps(batch, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) <= GZIP_THRESHOLD:
        return raw, "identity"
    return gzip.compress(raw, compresslevel=6, mtime=0), "gzip"


def split_id(batch_id: str, half: int) -> str:
    """The id of half ``half`` (0 or 1) of a split batch: derived, so retries stay idempotent."""
    return hashlib.sha256(f"{batch_id}/split/{half}".encode()).hexdigest()[:32]


def split_batch(batch: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Two valid batches sharing the records of ``batch``; ``None`` if it holds fewer than two.

    Each half keeps every top-level field, gets the id :func:`split_id` derives and names its
    origin in ``split_of``.
    """
    keys = ("spans", "marks", "snapshots")
    records = [(key, rec) for key in keys for rec in batch.get(key) or []]
    if len(records) < 2:
        return None
    cut = len(records) // 2
    halves = []
    for half, chunk in enumerate((records[:cut], records[cut:])):
        part = dict(batch, batch_id=split_id(batch["batch_id"], half), split_of=batch["batch_id"])
        for key in keys:
            part[key] = [rec for k, rec in chunk if k == key]
        halves.append(part)
    return halves


class _BearerAuth(requests.auth.AuthBase):
    """Adds ``Authorization: Bearer``; the key sits in a closure, not in an attribute."""

    def __init__(self, api_key: str) -> None:
        def header() -> str:
            return "Bearer " + api_key

        self._header = header

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header()
        return request

    def __repr__(self) -> str:
        return "<BearerAuth key=***>"


def _ca_bundle() -> str | bool:
    """``verify=`` for requests: it reads REQUESTS_CA_BUNDLE itself; add SSL_CERT_FILE. Never False."""
    if os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"):
        return True
    return os.environ.get("SSL_CERT_FILE") or True


class Uploader:
    """Sends spool batches (and the blobs they cite) to ``{api_endpoint}{ingest_path}``.

    >>> import tempfile, pathlib
    >>> up = Uploader(api_key="k", api_endpoint="https://example.invalid", ingest_path="/api/traces",
    ...               sdk_version="0.1.0", ledger=Ledger(pathlib.Path(tempfile.mkdtemp())))
    >>> up.url
    'https://example.invalid/api/traces'
    >>> up.close()
    """

    def __init__(
        self,
        *,
        api_key: str,
        api_endpoint: str,
        ingest_path: str,
        sdk_version: str,
        ledger: Ledger,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.url = api_endpoint.rstrip("/") + "/" + ingest_path.lstrip("/")
        self.ledger = ledger
        self.policy = policy or RetryPolicy()
        self._sdk_version = sdk_version

        def scrub(text: str) -> str:
            return text.replace(api_key, "***") if api_key else text

        self._scrub = scrub
        self._auth = _BearerAuth(api_key)
        self._session = self._new_session()
        self._blob_locations: dict[str, str] = {}  # local file path -> uploaded location

    def __repr__(self) -> str:
        return f"Uploader(url={self.url!r}, key=***)"

    def close(self) -> None:
        """Release the connection pool."""
        self._session.close()

    def after_fork_in_child(self) -> None:
        """Drop the connection pool inherited from the parent (its sockets are the parent's)."""
        self._session = self._new_session()

    def _new_session(self) -> requests.Session:
        session = requests.Session()  # honours HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE
        session.auth = self._auth
        session.verify = _ca_bundle()
        return session

    def upload_file(self, path: Path) -> Outcome:
        """Upload the batch stored at ``path`` unless the ledger already has it."""
        try:
            batch = json.loads(path.read_bytes())
        except FileNotFoundError:
            return Outcome("gone", error=f"{path.name} was removed before it was sent")
        except (OSError, ValueError) as exc:
            return Outcome("failed", error=f"{path.name} is unreadable: {exc}")
        if not isinstance(batch, dict) or not isinstance(batch.get("batch_id"), str):
            return Outcome("failed", error=f"{path.name} is not a spool batch")
        return self.upload_batch(batch)

    def upload_batch(self, batch: dict[str, Any]) -> Outcome:
        """Blobs first, then the batch; on 413 split it once. Records success in the ledger."""
        batch_id = batch["batch_id"]
        if self.ledger.is_sent(batch_id):
            return Outcome("sent")
        payload, blob_outcome = self._with_uploaded_blobs(batch)
        if blob_outcome is not None:
            return blob_outcome
        outcome = self._post(payload)
        if outcome.status == 413:
            outcome = self._post_halves(payload)
        if outcome.kind == "sent":
            self._record(batch_id)
        return outcome

    # -- the batch ---------------------------------------------------------------------------

    def _post_halves(self, payload: dict[str, Any]) -> Outcome:
        halves = split_batch(payload)
        if halves is None:
            return Outcome("failed", 413, "the server refused the batch as too large (HTTP 413)")
        attempts = 1
        for half in halves:
            if self.ledger.is_sent(half["batch_id"]):
                continue
            outcome = self._post(half)
            attempts += outcome.attempts
            if outcome.status == 413:
                return Outcome("failed", 413, "HTTP 413 even after splitting the batch in two")
            if outcome.kind != "sent":
                return outcome
            self._record(half["batch_id"])
        return Outcome("sent", 200, attempts=attempts)

    def _post(self, batch: dict[str, Any]) -> Outcome:
        try:
            body, encoding = encode_body(batch)
        except ValueError as exc:  # a non-finite float that escaped the runtime
            return Outcome("failed", error=f"batch {batch['batch_id']} is not valid JSON: {exc}")
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": encoding,
            "X-Cirron-SDK-Version": self._sdk_version,
            "X-Cirron-Batch-Id": batch["batch_id"],
        }
        return self._request("POST", self.url, body, headers)

    def _request(self, method: str, url: str, body: Any, headers: dict[str, str]) -> Outcome:
        timeout = (self.policy.connect_timeout, self.policy.read_timeout)
        try:
            resp = self._session.request(method, url, data=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            return Outcome("retry", error=self._scrub(f"{type(exc).__name__}: {exc}"), attempts=1)
        with resp:
            return self._classify(resp)

    def _classify(self, resp: requests.Response) -> Outcome:
        status = resp.status_code
        if 200 <= status < 300:
            return Outcome("sent", status, attempts=1)
        error = self._scrub(f"HTTP {status} from {resp.url}: {resp.text[:200]}")
        if status in AUTH_FAILURES:
            return Outcome("paused", status, error, attempts=1)
        if status in RETRYABLE or (status >= 500 and status != 501):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            return Outcome("retry", status, error, retry_after, attempts=1)
        return Outcome("failed", status, error, attempts=1)

    def _record(self, batch_id: str) -> None:
        try:
            self.ledger.mark_sent(batch_id)
        except OSError as exc:  # delivered; a lost record only means one more (deduplicated) send
            logger.debug("cirron: could not record batch %s as sent: %s", batch_id, exc)

    # -- snapshot blobs ----------------------------------------------------------------------

    def _with_uploaded_blobs(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Outcome | None]:
        """A copy of ``batch`` whose local ``file://`` blob URIs point at uploaded copies."""
        snapshots = batch.get("snapshots") or []
        if not any(_local_path(s.get("blob_uri")) for s in snapshots):
            return batch, None
        rewritten = []
        for snap in snapshots:
            local = _local_path(snap.get("blob_uri"))
            if local is None:
                rewritten.append(snap)
                continue
            location, outcome = self._put_blob(local, snap["span_id"])
            if outcome is not None:
                return batch, outcome
            rewritten.append(dict(snap, blob_uri=location) if location else snap)
        return dict(batch, snapshots=rewritten), None

    def _put_blob(self, local: Path, span_id: str) -> tuple[str | None, Outcome | None]:
        """Upload one blob (once per process); ``(location, None)`` or ``(None, outcome)``.

        A missing blob file or a blob the server rejects for good leaves the ``file://`` URI in
        place: the batch's statistics are still worth delivering.
        """
        key = str(local)
        if key in self._blob_locations:
            return self._blob_locations[key], None
        url = f"{self.url}/blobs/snapshots/{quote(span_id)}/{quote(local.name)}"
        headers = {"Content-Type": "application/octet-stream"}
        try:
            with open(local, "rb") as body:
                outcome, location = self._put(url, body, headers)
        except OSError as exc:
            logger.warning("cirron: snapshot blob %s is unreadable (%s); not uploaded", local, exc)
            return None, None
        if outcome.kind in ("retry", "paused"):
            return None, outcome
        if outcome.kind != "sent":
            logger.warning("cirron: the server refused snapshot blob %s: %s", local, outcome.error)
            return None, None
        self._blob_locations[key] = location or url
        return self._blob_locations[key], None

    def _put(self, url: str, body: Any, headers: dict[str, str]) -> tuple[Outcome, str | None]:
        timeout = (self.policy.connect_timeout, self.policy.read_timeout)
        try:
            resp = self._session.put(url, data=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            return Outcome("retry", error=self._scrub(f"{type(exc).__name__}: {exc}")), None
        with resp:
            outcome = self._classify(resp)
            return outcome, _location(resp) if outcome.kind == "sent" else None


def _local_path(uri: object) -> Path | None:
    if not isinstance(uri, str) or not uri.startswith("file://"):
        return None
    return Path(unquote(urlsplit(uri).path))


def _location(resp: requests.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("location"), str):
        return str(body["location"])
    return resp.headers.get("Location")
