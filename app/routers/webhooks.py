"""/v1/webhooks: subscribe to job and sweep events, list, delete, and see the delivery attempts."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.deps import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep
from app.errors import NotFoundError, SpecValidationError
from app.models import Webhook, WebhookDelivery
from app.routers.common import TenantFilter, problems
from app.schemas import WebhookCreate, WebhookCreated, WebhookDeliveryPage, WebhookRead
from app.tenancy import Principal
from app.webhooks import DestinationRefused, WebhookRepository, check_destination

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def webhook_to_read(webhook: Webhook) -> dict[str, Any]:
    return {"id": webhook.id, "url": webhook.url, "events": webhook.events,
            "description": webhook.description, "job_id": webhook.job_id,
            "sweep_id": webhook.sweep_id, "tenant": webhook.tenant,
            "created_at": webhook.created_at,
            "links": {"self": f"/v1/webhooks/{webhook.id}",
                      "deliveries": f"/v1/webhooks/{webhook.id}/deliveries"}}


def delivery_to_read(delivery: WebhookDelivery) -> dict[str, Any]:
    return {"id": delivery.message_id, "event": delivery.event, "job_id": delivery.job_id,
            "sweep_id": delivery.sweep_id,
            "status": delivery.state, "attempts": delivery.attempts,
            "last_status_code": delivery.last_status_code, "last_error": delivery.last_error,
            "next_attempt_at": delivery.next_attempt_at if delivery.state == "pending" else None,
            "created_at": delivery.created_at, "finished_at": delivery.finished_at,
            "attempt_log": delivery.attempt_log or [], "payload": json.loads(delivery.payload)}


def checked_url(url: str, allow_private: bool, loc: list[str | int]) -> str:
    """``url`` if it may receive webhooks, else a 422 naming the field."""
    try:
        return check_destination(url, allow_private=allow_private)
    except DestinationRefused as exc:
        raise SpecValidationError(f"{'.'.join(map(str, loc))}: {exc}", slug="webhook-url-refused",
                                  errors=[{"loc": loc, "msg": str(exc),
                                           "type": "url_refused"}]) from None


def _get(session: Any, webhook_id: str, principal: Principal) -> Webhook:
    """The subscription, if ``principal`` may see it; else the 404 of a missing one. Every
    look-up of a webhook by id goes through here."""
    webhook = WebhookRepository(session).get(webhook_id)
    if webhook is None or not principal.can_see(webhook.tenant):
        raise NotFoundError(f"webhook {webhook_id} does not exist (or was deleted)",
                            slug="webhook-not-found")
    return webhook


@router.post(
    "", status_code=201, response_model=WebhookCreated, operation_id="createWebhook",
    summary="Subscribe to job and sweep events",
    description="Deliveries are POSTed as JSON `{type, timestamp, data}` and signed the "
                "Standard Webhooks way (`webhook-id`, `webhook-timestamp`, "
                "`webhook-signature: v1,<base64 HMAC-SHA256>`) with the `secret` returned "
                "here **once**. At least once, retried with exponential backoff; see "
                "`/deliveries`. `sweep.succeeded` / `sweep.failed` / `sweep.cancelled` come "
                "once per sweep, when its last member finished, with the payload of the "
                "sweep's own `notify` webhook. A tenant's subscription gets that tenant's "
                "job and sweep events only; the admin's gets every tenant's.",
    responses=problems(422))
def create_webhook(body: WebhookCreate, session: SessionDep, settings: SettingsDep,
                   principal: PrincipalDep, response: Response) -> dict[str, Any]:
    url = checked_url(body.url, settings.webhook_allow_private, ["body", "url"])
    webhook = WebhookRepository(session).create(url=url, events=body.events,
                                                tenant=principal.tenant,
                                                description=body.description)
    session.commit()
    response.headers["Location"] = f"/v1/webhooks/{webhook.id}"
    return {**webhook_to_read(webhook), "secret": webhook.secret}


@router.get("", response_model=list[WebhookRead], operation_id="listWebhooks",
            summary="List subscriptions to every job's and sweep's events",
            description="Oldest first; secrets are never shown again. A job's own `notify` "
                        "webhook is at `/v1/webhooks/{job_id}` (a sweep's at "
                        "`/v1/webhooks/{sweep_id}`) and not listed here. A tenant's "
                        "key lists its own; the admin's every one (or a tenant's with "
                        "`tenant`).")
def list_webhooks(session: ReadSessionDep, principal: PrincipalDep,
                  tenant: TenantFilter = None) -> list[dict[str, Any]]:
    return [webhook_to_read(w)
            for w in WebhookRepository(session).all(tenant=principal.scope(tenant))]


@router.get("/{webhook_id}", response_model=WebhookRead, operation_id="getWebhook",
            summary="Get a subscription", description="URL, events and links; not the secret.",
            responses=problems(404))
def get_webhook(webhook_id: str, session: ReadSessionDep, principal: PrincipalDep
                ) -> dict[str, Any]:
    return webhook_to_read(_get(session, webhook_id, principal))


@router.delete("/{webhook_id}", status_code=204, operation_id="deleteWebhook",
               summary="Delete a subscription and its delivery records",
               description="Nothing more is sent to it, pending deliveries included.",
               responses=problems(404))
def delete_webhook(webhook_id: str, session: SessionDep, principal: PrincipalDep) -> Response:
    if not WebhookRepository(session).delete(_get(session, webhook_id, principal).id):
        raise NotFoundError(f"webhook {webhook_id} does not exist", slug="webhook-not-found")
    session.commit()
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryPage,
            operation_id="listWebhookDeliveries", summary="Deliveries and their attempts",
            description="Newest first: each delivery's status (`pending`, `succeeded`, "
                        "`failed`), attempts with the receiver's status codes, and the body.",
            responses=problems(404, 422))
def list_deliveries(
    webhook_id: str, session: ReadSessionDep, principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> dict[str, Any]:
    _get(session, webhook_id, principal)
    before: int | None = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise SpecValidationError(
                "cursor is not valid: pass the next_cursor of a previous page unchanged",
                slug="invalid-cursor", errors=[{"loc": ["query", "cursor"],
                                                "msg": "invalid cursor", "type": "value_error"}])
        before = int(cursor)
    items = WebhookRepository(session).deliveries(webhook_id, limit=limit + 1, before=before)
    more = len(items) > limit
    items = items[:limit]
    return {"items": [delivery_to_read(d) for d in items],
            "next_cursor": str(items[-1].id) if more else None}
