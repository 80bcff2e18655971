"""The ``Idempotency-Key`` header on creating POSTs (:mod:`grace.idempotency` keeps the keys).

A route takes ``idem: IdempotencyDep`` and hands its work to :meth:`Idempotency.answer`. Without the
header the work runs as ever. With it, the first request runs and its answer is kept 24 h under the
key (per principal); a retry with the same key, route and body gets that answer again (same status and
body, with ``Idempotent-Replayed: true``) and nothing runs twice; another route or body under the same
key is a 409 ``idempotency_key_reused``, and a retry while the first still runs a 409
``idempotency_key_in_use``. The contract declares the header and the 409 on every such route
(``api/contract.py`` finds the dependency).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors
from grace.api.deps import get_principal, get_services
from grace.api.schemas.common import encode
from grace.auth import Principal
from grace.idempotency import MAX_KEY_LENGTH, Stored, fingerprint
from grace.services import Services

__all__ = ["HEADER", "REPLAYED", "Idempotency", "IdempotencyDep", "Record", "get_idempotency"]

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
DESCRIPTION = (
    "Makes a retry safe: the same key with the same body within 24 hours returns the first answer (same status"
    " and body, header Idempotent-Replayed: true) and does nothing again; the same key with another body or"
    " route is a 409 (code idempotency_key_reused), and while the first request still runs a 409 (code"
    " idempotency_key_in_use). Keys are per principal: 1 to 255 visible ASCII characters (a UUID is typical)."
)

# Inside the work's own transaction: record the answer built from what it made (see Idempotency.answer).
Record = Callable[[AsyncConnection, Any], Awaitable[None]]


@dataclass
class Idempotency:
    """One request's key (None: no header), and how to answer under it."""

    request: Request
    services: Services
    principal: Principal
    key: str | None

    @property
    def owner(self) -> str:
        """Whose keys these are: the user, or one agent of the user."""
        return f"{self.principal.user_id}/{self.principal.agent or ''}"

    async def _fingerprint(self, content: bytes | None) -> str:
        body = content if content is not None else await self.request.body()
        return fingerprint(self.request.method, self.request.url.path, body)

    @staticmethod
    def _response(stored: Stored, *, replayed: bool) -> Response:
        headers = {REPLAYED: "true"} if replayed else None
        return Response(stored.body, status_code=stored.status, media_type="application/json", headers=headers)

    async def answer(
        self,
        work: Callable[[Record | None], Awaitable[Any]],
        model: type[BaseModel],
        *,
        status_code: int = 200,
        exclude_unset: bool = False,
        transactional: bool = False,
        content: bytes | None = None,
    ) -> Response:
        """Run ``work`` once per key and answer with what it returned, serialised through ``model`` (once, by
        pydantic, with or without a key: the route's response_model is what /openapi.json publishes).

        ``transactional``: ``work`` is given a :data:`Record` to call inside the transaction that makes
        its change, with the answer; the key then commits with the change. Otherwise the key is held
        while ``work`` runs and its answer recorded after. ``content``: what identifies the request when
        its body is not JSON read by FastAPI (a multipart upload).
        """
        if self.key is None:
            # Serialised here, once, whether or not a key came (the same bytes a replay would send).
            body = encode(model, await work(None), exclude_unset=exclude_unset)
            return self._response(Stored(status_code, body), replayed=False)
        keys = self.services.idempotency
        fp = await self._fingerprint(content)
        if transactional:
            stored = await keys.lookup(self.owner, self.key, fp)
            if stored is not None:
                return self._response(stored, replayed=True)
            recorded: list[str] = []

            async def record(conn: AsyncConnection, answer: Any) -> None:
                body = encode(model, answer, exclude_unset=exclude_unset)
                assert self.key is not None
                await keys.record_in(conn, self.owner, self.key, fp, status_code, body)
                recorded.append(body)

            try:
                await work(record)
            except IntegrityError:
                # The same key committed by a concurrent request first: this one's change rolled back with it.
                stored = await keys.lookup(self.owner, self.key, fp)
                if stored is None:
                    raise errors.IdempotencyKeyInUse() from None
                return self._response(stored, replayed=True)
            if not recorded:
                raise RuntimeError("transactional work did not record its answer")
            # The last: a submission grouped with others is tried again alone when its group's transaction
            # fails, and what it recorded in the group rolled back with it (a task id that does not exist).
            return self._response(Stored(status_code, recorded[-1]), replayed=False)
        stored = await keys.begin(self.owner, self.key, fp)
        if stored is not None:
            return self._response(stored, replayed=True)
        try:
            answer = await work(None)
            body = encode(model, answer, exclude_unset=exclude_unset)
        except BaseException:
            await keys.abandon(self.owner, self.key)
            raise
        await keys.finish(self.owner, self.key, status_code, body)
        return self._response(Stored(status_code, body), replayed=False)


async def get_idempotency(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            pattern=r"^[\x21-\x7e]+$",
            description=DESCRIPTION,
        ),
    ] = None,
) -> Idempotency:
    # The principal and services the route's policy resolved (deps.get_principal keeps them per request).
    return Idempotency(request, await get_services(request), await get_principal(request), idempotency_key)


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
