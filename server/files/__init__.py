"""Files (OpenAI's ``/v1/files``): uploads a client refers to later by id, as a batch's input
file (purpose ``batch``) or an image in a JSON edit body (``{"file_id": ...}``, purpose
``vision``), and the output files of batches (``batch_output``, written by the server).

Where things are: the bytes in the url images' object store (``server/storage``: a local
folder or S3) under ``files/<id>``; the metadata in the job database (``database.files``: same
engine, PostgreSQL or SQLite). A file lives ``--file-ttl`` seconds at most (the store's expiry),
less when the upload asked (``expires_after``); an expired file reads as missing and is swept.

A file belongs to the API key that uploaded it (``owner``: the key's id, "" without auth): any
other key gets the same 404 as for a file that never existed. Nothing here imports aiohttp.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import APIError, invalid
from ..jobs.database import files
from ..storage import Store

log = logging.getLogger("server.files")

#: purposes a client may upload with; ``batch_output`` files are written by batches only
UPLOAD_PURPOSES = ("batch", "vision")
OUTPUT_PURPOSE = "batch_output"
#: purposes whose files may be an image of an edit (``{"file_id": ...}``)
IMAGE_PURPOSES = ("vision", "batch", "user_data")
#: a file id: "file-" + 128 random bits in hex (ids are looked up only in this exact shape)
FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")
#: the longest filename kept (longer ones are cut; it is only a label)
MAX_FILENAME = 255
#: list pages: OpenAI's default and largest ``limit``
LIST_DEFAULT, LIST_MAX = 10000, 10000
#: how often expired files are deleted
SWEEP_S = 60.0


def new_file_id() -> str:
    return f"file-{secrets.token_hex(16)}"


def derived_file_id(seed: str) -> str:
    """A file id fixed by ``seed`` (a batch's output file: the same whichever replica writes
    it, so writing it twice is harmless)."""
    return f"file-{hashlib.sha256(seed.encode()).hexdigest()[:32]}"


def object_key(file_id: str) -> str:
    return f"files/{file_id}"


def not_found(file_id: str, param: str | None = None, status: int = 404) -> APIError:
    return APIError(
        status,
        f"No file '{file_id[:48]}' for this API key: it never existed, belongs to another "
        "key, was deleted or has expired. Upload it again with POST /v1/files.",
        code="file_not_found" if status == 404 else "invalid_file_id",
        param=param,
    )


@dataclass(frozen=True)
class FileRecord:
    """One row of ``database.files``."""

    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    expires_at: float
    object_key: str

    @classmethod
    def from_row(cls, row) -> FileRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def public(self) -> dict[str, Any]:
        """The OpenAI ``FileObject``."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileService:
    """Every file operation, for one caller (``owner``). Database and store calls run in
    ``executor``; nothing here blocks the event loop."""

    def __init__(
        self,
        engine: sa.Engine,
        objects: Store,
        executor: Executor,
        ttl_s: int,
        clock: Callable[[], float] = time.time,
        max_stored_bytes: int | None = None,
    ) -> None:
        self.engine = engine
        self.objects = objects
        self.executor = executor
        #: the longest a file lives: the store's expiry (``--file-ttl``)
        self.ttl_s = ttl_s
        self.clock = clock
        #: bytes of uploaded files one key may keep (``--max-stored-files-mb``); None: no cap
        self.max_stored_bytes = max_stored_bytes

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ------------------------------------------------------------------ write
    def check_expiry(self, seconds: int | None) -> int:
        """The lifetime of a new file: ``expires_after[seconds]`` if given (1..ttl), else the
        store's ttl."""
        if seconds is None:
            return self.ttl_s
        if not 1 <= seconds <= self.ttl_s:
            raise invalid(
                f"expires_after[seconds] must be between 1 and {self.ttl_s} (this server keeps "
                f"files at most {self.ttl_s} s, its --file-ttl).",
                "expires_after",
                "invalid_value",
            )
        return seconds

    def put(
        self,
        owner: str,
        filename: str,
        purpose: str,
        data: bytes,
        lifetime_s: int | None = None,
        file_id: str | None = None,
    ) -> FileRecord:
        """Blocking: store ``data`` and its row. With ``file_id`` given and already stored,
        the stored file is kept (an idempotent rewrite)."""
        file_id = file_id or new_file_id()
        now = self.clock()
        record = FileRecord(
            id=file_id,
            owner=owner,
            purpose=purpose,
            filename=filename[:MAX_FILENAME] or "file",
            bytes=len(data),
            created_at=now,
            expires_at=now + (lifetime_s or self.ttl_s),
            object_key=object_key(file_id),
        )
        with self.engine.begin() as conn:
            row = conn.execute(files.select().where(files.c.id == file_id)).mappings().first()
        if row is not None:
            return FileRecord.from_row(row)
        self.objects.put_object(record.object_key, data, "application/octet-stream")
        try:
            with self.engine.begin() as conn:
                conn.execute(files.insert().values(**record.__dict__))
        except sa.exc.IntegrityError:  # a twin wrote it meanwhile: theirs stands
            with self.engine.begin() as conn:
                row = conn.execute(files.select().where(files.c.id == file_id)).mappings().one()
            return FileRecord.from_row(row)
        return record

    async def create(
        self, owner: str, filename: str, purpose: str, data: bytes, lifetime_s: int | None
    ) -> FileRecord:
        if purpose not in UPLOAD_PURPOSES:
            raise invalid(
                f"purpose {purpose[:40]!r} is not supported here: use one of "
                f"{', '.join(UPLOAD_PURPOSES)}.",
                "purpose",
                "invalid_value",
            )
        return await self._run(self._upload, owner, filename, purpose, data, lifetime_s)

    def stored_bytes(self, owner: str) -> int:
        """Bytes of ``owner``'s unexpired uploads (a batch's output files are not counted:
        their size is bounded by the batch)."""
        q = sa.select(sa.func.coalesce(sa.func.sum(files.c.bytes), 0)).where(
            files.c.owner == owner,
            files.c.expires_at > self.clock(),
            files.c.purpose != OUTPUT_PURPOSE,
        )
        with self.engine.begin() as conn:
            return int(conn.execute(q).scalar_one())

    def _upload(self, owner, filename, purpose, data: bytes, lifetime_s) -> FileRecord:
        """Blocking: ``put`` under the per-key cap. Checked before the write, so concurrent
        uploads of one key can pass it by at most their own sizes."""
        cap = self.max_stored_bytes
        if cap is not None and self.stored_bytes(owner) + len(data) > cap:
            raise APIError(
                429,
                f"This API key keeps over {cap // 2**20} MB of files (the server's "
                "--max-stored-files-mb): delete files it no longer needs (DELETE "
                "/v1/files/{id}) or wait for them to expire, then upload again.",
                type="rate_limit_exceeded",
                code="storage_limit_exceeded",
                retry=False,
            )
        return self.put(owner, filename, purpose, data, lifetime_s)

    # ------------------------------------------------------------------ read
    def _get(self, owner: str, file_id: str) -> FileRecord | None:
        if not FILE_ID.match(file_id):
            return None
        q = files.select().where(
            files.c.id == file_id, files.c.owner == owner, files.c.expires_at > self.clock()
        )
        with self.engine.begin() as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else FileRecord.from_row(row)

    async def get(self, owner: str, file_id: str) -> FileRecord | None:
        """The file if it exists for ``owner`` and has not expired."""
        return await self._run(self._get, owner, file_id)

    def _content(self, owner: str, file_id: str) -> bytes | None:
        record = self._get(owner, file_id)
        return None if record is None else self.objects.get_object(record.object_key)

    def _open(self, owner: str, file_id: str):
        record = self._get(owner, file_id)
        opened = None if record is None else self.objects.open_object(record.object_key)
        return None if opened is None else (record, *opened)

    async def open(self, owner: str, file_id: str) -> tuple[FileRecord, Any, int] | None:
        """``(record, stream, size)`` of ``owner``'s file, to read in chunks (``read``) and
        ``close``; None if it is not there (never existed, another key's, expired)."""
        return await self._run(self._open, owner, file_id)

    async def read(self, stream, size: int) -> bytes:
        """Up to ``size`` more bytes of an opened file (b"" at its end), read in a thread."""
        return await self._run(stream.read, size)

    async def close(self, stream) -> None:
        await self._run(stream.close)

    def read_sync(self, owner: str, file_id: str) -> bytes | None:
        """Blocking ``content`` (for callers already in a worker thread)."""
        return self._content(owner, file_id)

    async def read_for_reference(
        self, owner: str, file_id: str, param: str, max_bytes: int
    ) -> bytes:
        """The bytes of a file an edit names as an image (``{"file_id": ...}``): a 400
        ``invalid_file_id`` with ``param`` when it is not there for ``owner`` (or is not an
        image purpose), ``image_too_large`` over ``max_bytes`` (checked before reading)."""
        record = await self.get(owner, file_id)
        if record is None or record.purpose not in IMAGE_PURPOSES:
            raise not_found(file_id, param, status=400)
        if record.bytes > max_bytes:
            raise invalid(
                f"File '{file_id}' is larger than {max_bytes} bytes; use a smaller image.",
                param,
                "image_too_large",
            )
        data = await self._run(self.objects.get_object, record.object_key)
        if data is None:  # expired with the store a moment before its row
            raise not_found(file_id, param, status=400)
        return data

    def _list(
        self, owner: str, purpose: str | None, limit: int, after: str | None, order: str
    ) -> tuple[list[FileRecord], bool]:
        q = files.select().where(files.c.owner == owner, files.c.expires_at > self.clock())
        if purpose is not None:
            q = q.where(files.c.purpose == purpose)
        key = (files.c.created_at, files.c.id)
        if after is not None:
            with self.engine.begin() as conn:
                anchor = conn.execute(
                    sa.select(files.c.created_at).where(files.c.id == after, files.c.owner == owner)
                ).first()
            if anchor is not None:
                at = anchor[0]
                if order == "asc":
                    q = q.where(sa.or_(key[0] > at, sa.and_(key[0] == at, key[1] > after)))
                else:
                    q = q.where(sa.or_(key[0] < at, sa.and_(key[0] == at, key[1] < after)))
        q = q.order_by(*(k.desc() if order == "desc" else k for k in key)).limit(limit + 1)
        with self.engine.begin() as conn:
            rows = [FileRecord.from_row(r) for r in conn.execute(q).mappings()]
        return rows[:limit], len(rows) > limit

    async def list(
        self, owner: str, purpose: str | None, limit: int, after: str | None, order: str
    ) -> tuple[list[FileRecord], bool]:
        """One page of ``owner``'s files, newest first (``order="desc"``, OpenAI's default),
        starting after the file ``after``; ``(page, has_more)``."""
        return await self._run(self._list, owner, purpose, limit, after, order)

    # ------------------------------------------------------------------ delete, sweep
    def _delete(self, owner: str, file_id: str) -> bool:
        record = self._get(owner, file_id)
        if record is None:
            return False
        with self.engine.begin() as conn:
            conn.execute(files.delete().where(files.c.id == file_id))
        self.objects.delete_object(record.object_key)
        return True

    async def delete(self, owner: str, file_id: str) -> bool:
        return await self._run(self._delete, owner, file_id)

    def sweep(self, limit: int = 500) -> int:
        """Blocking: delete expired files (rows and bytes); returns how many."""
        with self.engine.begin() as conn:
            rows = [
                FileRecord.from_row(r)
                for r in conn.execute(
                    files.select().where(files.c.expires_at <= self.clock()).limit(limit)
                ).mappings()
            ]
        for record in rows:
            self.objects.delete_object(record.object_key)
        if rows:
            with self.engine.begin() as conn:
                conn.execute(files.delete().where(files.c.id.in_([r.id for r in rows])))
        return len(rows)

    async def sweep_forever(self) -> None:
        """Delete expired files every ``SWEEP_S`` (the app runs this as a task)."""
        while True:
            try:
                removed = await self._run(self.sweep)
                if removed:
                    log.info("removed %d expired files", removed)
            except Exception:  # noqa: BLE001 - a database outage must not end the sweep
                log.exception("files sweep failed; retrying")
            await asyncio.sleep(SWEEP_S)
