"""A user named in a request (``user_id`` in a query or body), by id or by username.

Wherever a request names a user, either spelling works. Naming yourself always does; naming
someone else needs an admin (403 otherwise, before any lookup, so a member cannot learn which
usernames exist), and a user that does not exist is a 404 naming it: never a silent empty answer.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from grace import errors
from grace.api import bounds
from grace.api.deps import CurrentPrincipal, ServicesDep
from grace.auth import Principal
from grace.services import Services

__all__ = ["ALL_USERS", "QueryUser", "QueryUserOrAll", "user_id_for"]

ALL_USERS = "*"
DESCRIBED = "The user, by id or username: yours, or (admins) anyone's."


async def user_id_for(services: Services, principal: Principal, named: str | None) -> str | None:
    """Return the id of the user ``named`` (an id or a username); None when it names none."""
    if named is None:
        return None
    named = named.strip()
    bounds.check_text_or_refuse(named, "user_id")
    if named == principal.user_id or named.lower() == principal.username:
        return principal.user_id
    if not principal.is_admin:
        raise errors.PermissionDenied("user_id must be your own unless you are an admin")
    return (await services.accounts.get_user(named)).id


async def _query_user(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: Annotated[str | None, Query(min_length=1, max_length=64, description=DESCRIBED)] = None,
) -> str | None:
    return await user_id_for(services, principal, user_id)


async def _query_user_or_all(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: Annotated[
        str | None, Query(min_length=1, max_length=64, description=DESCRIBED + " Admins: '*' for everyone.")
    ] = None,
) -> str | None:
    if user_id is not None and user_id.strip() == ALL_USERS:
        return ALL_USERS
    return await user_id_for(services, principal, user_id)


QueryUser = Annotated[str | None, Depends(_query_user)]
QueryUserOrAll = Annotated[str | None, Depends(_query_user_or_all)]
