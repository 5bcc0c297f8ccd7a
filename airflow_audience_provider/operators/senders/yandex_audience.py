"""The contact-list engine's sender for a Yandex.Audience file segment: chunks to file uploads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow_audience_provider.core.errors import AudienceError, AudienceValidationError
from airflow_audience_provider.hooks.yandex_audience import CONTENT_TYPES, VENDOR, YandexAudienceNoChangesError
from airflow_audience_provider.identifiers import ChunkResult, SyncCancelled, render_file
from airflow_audience_provider.operators.senders import unsettled_until

if TYPE_CHECKING:
    from airflow_audience_provider.core.transport import Transport
    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

log = logging.getLogger(__name__)


class YandexAudienceSegmentSender:
    """The contact-list engine's :class:`~airflow_audience_provider.identifiers.sync.ChunkSender` for one
    file segment: the first full upload creates it (upload + confirm), later chunks go to
    ``modify_data`` (``replace``, ``addition``, ``subtraction``).

    :param hook: the hook.
    :param name: the segment's name (used on confirm).
    :param content_type: ``crm`` (CSV with a header, ``upload_csv_file``), ``idfa_gaid``/``mac``
        (plain file, ``upload_file``) or ``client_id`` (plain file of Metrica ClientIDs, confirmed
        with :meth:`~airflow_audience_provider.hooks.yandex_audience.YandexAudienceHook.confirm_client_id_segment`).
    :param segment_id: the existing segment, or None to create it on the first replace chunk.
    :param hashed: whether the values are hashed (SHA-256).
    :param device_matching_type: passed to confirm.
    :param check_size: send ``check_size=true`` on confirm and replace (Yandex refuses < 100 entries).
    :param counter_id: the Metrica counter of a ``client_id`` list (required for it).
    :param cancel: set when the task is being stopped: a draft uploaded meanwhile is deleted
        instead of confirmed.
    :param on_created: called with the new segment as soon as it exists (push id and link early).
    :param draft_prefix: the start of the file name of every draft this destination uploads, so the
        drafts a killed run left behind can be found and deleted by the next run.
    """

    #: One chunk at a time: Yandex.Audience allows 10 writes per minute per login.
    send_concurrency = 1

    def __init__(
        self,
        hook: YandexAudienceHook,
        name: str,
        content_type: str,
        *,
        segment_id: int | str | None = None,
        hashed: bool = True,
        device_matching_type: str | None = None,
        check_size: bool = True,
        counter_id: int | str | None = None,
        cancel: threading.Event | None = None,
        on_created: Callable[[dict[str, Any]], None] | None = None,
        draft_prefix: str = "data",
    ) -> None:
        if content_type == "client_id" and counter_id in (None, ""):
            raise AudienceValidationError("a ClientID segment needs the Metrica counter_id", vendor=VENDOR)
        self.hook = hook
        self.name = name
        self.content_type = content_type
        self.segment_id = segment_id
        self.hashed = hashed
        self.device_matching_type = device_matching_type
        self.check_size = check_size
        self.counter_id = counter_id
        self.cancel = cancel
        self.on_created = on_created
        self.draft_prefix = draft_prefix
        self.created = False
        self.calls: list[dict[str, Any]] = []
        #: id of a draft uploaded but not yet confirmed (what ``discard_pending_draft`` deletes)
        self.pending_draft: int | str | None = None
        #: True while a confirm is in flight: its outcome is unknown, so the draft is not deleted then
        self.confirming = False
        #: ``time.monotonic()`` of the last ``modify_data`` attempt answered with a 5xx (it may still land)
        self._modify_error_at: float | None = None

    @property
    def remote_id(self) -> str | None:
        """The segment's id, once it exists: the snapshot records which segment it describes."""
        return str(self.segment_id) if self.segment_id is not None else None

    @property
    def transport(self) -> Transport:
        """The hook's transport: every request of this sender goes through it."""
        return self.hook.get_conn()

    def unsettled_until(self) -> float:
        """``time.monotonic()`` until which a request of this hook with unknown outcome may still land
        (one given up on, or a ``modify_data`` answered with a 5xx: Yandex answers ``timeout`` 504 for
        a request that ran too long). The engine sends no addition after a replace, and keeps the
        lease, until then. Uploads and confirms answered 5xx are read back instead (the hook's)."""
        return unsettled_until(self.hook.get_conn(), self._modify_error_at)

    def landing_window(self) -> float:
        """Seconds after it was sent that a request of this sender may still be applied by Yandex."""
        return self.hook.get_conn().landing_window()

    @property
    def _is_csv(self) -> bool:
        return CONTENT_TYPES.get(self.content_type) == "upload_csv_file"

    def _file(self, chunk: Any) -> tuple[bytes, str]:
        return render_file(chunk.rule, chunk.identifiers), f"{self.draft_prefix}.{'csv' if self._is_csv else 'tsv'}"

    def _create(self, chunk: Any) -> Any:
        content, filename = self._file(chunk)
        upload = self.hook.upload_csv_file if self._is_csv else self.hook.upload_file
        draft = upload(content, filename)
        self.pending_draft = draft["id"]
        if self.cancel is not None and self.cancel.is_set():
            # Stopped while the file was uploading: do not start processing a list nobody waits for.
            self.discard_pending_draft()
            raise SyncCancelled("the task was stopped during the upload; the draft was deleted, not confirmed")
        self.confirming = True
        try:
            if self.content_type == "client_id":
                # ClientID files have their own confirm (segment/client_id/{id}/confirm): counter, no hashing flags.
                segment = self.hook.confirm_client_id_segment(draft["id"], self.name, self.counter_id)  # type: ignore[arg-type]
            else:
                segment = self.hook.confirm_segment(
                    draft["id"],
                    self.name,
                    self.content_type,
                    hashed=self.hashed,
                    hashing_alg="SHA256" if self.hashed else None,
                    device_matching_type=self.device_matching_type,
                    check_size=self._check_size(chunk),
                )
        except AudienceError:
            # Do not leave an unconfirmed draft behind (it is never processed); the confirm error is the news.
            try:
                self.hook.delete_segment(draft["id"])
            except AudienceError as cleanup:
                log.warning("Could not delete the unconfirmed draft %s: %s", draft["id"], cleanup.message)
            self.pending_draft = None
            raise
        finally:
            self.confirming = False
        self.pending_draft = None
        self.segment_id = segment["id"]
        self.created = True
        self.calls.append({"operation": "upload+confirm", "entries": len(chunk)})
        if self.on_created:
            self.on_created(segment)
        return ChunkResult(accepted=len(chunk), detail={"segment_id": segment["id"], "operation": "create"})

    def discard_pending_draft(self) -> None:
        """Delete the draft uploaded but not yet confirmed, if any (the task is being stopped).

        Without this a stopped task would leave a nameless ``uploaded`` draft in the account
        (it is never processed; whether drafts expire is not documented).
        """
        if self.confirming:
            # The confirm may land: deleting now could delete the new segment. If it does not land, the
            # next run deletes the draft (its file name carries this destination's draft prefix).
            log.warning(
                "Stopped during the confirm of draft %s; the next run cleans it up if needed", self.pending_draft
            )
            return
        draft, self.pending_draft = self.pending_draft, None
        if draft is None:
            return
        try:
            self.hook.delete_segment(draft)
            log.info("Deleted the unconfirmed Yandex.Audience draft %s of the stopped upload", draft)
        except AudienceError as exc:
            log.warning("Could not delete the unconfirmed draft %s: %s", draft, exc.message)

    def _modify(self, chunk: Any, modification_type: str, check_size: bool) -> Any:
        if self.segment_id is None:
            raise AudienceValidationError(
                f"Yandex.Audience segment {self.name!r} does not exist yet; cannot apply {modification_type}",
                vendor=VENDOR,
            )
        content, filename = self._file(chunk)
        transport = self.hook.get_conn()
        before = transport.last_server_error
        try:
            self.hook.modify_data(self.segment_id, content, modification_type, check_size=check_size, filename=filename)
        except YandexAudienceNoChangesError:
            # The same file was applied already (a resend after an ambiguous failure): a no-op.
            self.calls.append({"operation": modification_type, "entries": len(chunk), "no_changes": True})
            return ChunkResult(accepted=len(chunk), detail={"operation": modification_type, "no_changes": True})
        finally:
            if transport.last_server_error != before:  # an attempt was answered 5xx: it may still land
                self._modify_error_at = transport.last_server_error
        self.calls.append({"operation": modification_type, "entries": len(chunk)})
        return ChunkResult(accepted=len(chunk), detail={"operation": modification_type})

    def _check_size(self, chunk: Any) -> bool:
        # A list split over several files: its first file may hold fewer than 100 entries although
        # the list does not; the engine's guard has checked the whole list's minimum already.
        return self.check_size and getattr(chunk, "total", 1) <= 1

    def replace(self, chunk: Any) -> Any:
        if self.segment_id is None:
            return self._create(chunk)
        return self._modify(chunk, "replace", self._check_size(chunk))

    def add(self, chunk: Any) -> Any:
        # Increments may be small: the 100-entry minimum concerns the whole list, which the
        # engine's guard checks (assumption: Yandex applies check_size to the file alone).
        return self._modify(chunk, "addition", False)

    def remove(self, chunk: Any) -> Any:
        return self._modify(chunk, "subtraction", False)

    def clear(self) -> None:
        raise AudienceValidationError(
            f"Yandex.Audience cannot empty segment {self.name!r} (a file needs entries); delete the segment instead",
            vendor=VENDOR,
        )
