"""Who is calling: a tenant's key, or the admin.

Every job, data set, sweep, webhook and model belongs to the tenant whose key created it
(`tenant` column; ``None`` for what the admin created). A tenant sees only its own; another
tenant's resource is answered with 404, exactly as if it did not exist. The admin (the
`GRADWATCH_API_KEY`, or anyone when the server has no admin key and no tenant key was ever
created) sees everything. Who a request is: :func:`app.deps.require_api_key` (tenant keys:
:mod:`app.keys`); every look-up by id goes through one function per resource
(``services.get_job``, ``sweeps.get_sweep``, the webhooks router's ``_get``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ADMIN", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    tenant: str | None  # the tenant's name; None for the admin

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def can_see(self, owner: str | None) -> bool:
        """Whether a resource owned by `owner` exists for this caller."""
        return self.tenant is None or owner == self.tenant

    def scope(self, requested: str | None = None) -> str | None:
        """The tenant a list is restricted to: a tenant's own (whatever it asks for); for the
        admin, ``requested`` (None: every tenant's and the admin's own)."""
        return self.tenant if self.tenant is not None else requested


ADMIN = Principal(tenant=None)
