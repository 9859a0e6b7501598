"""The EventSub webhook's page: Twitch's signed POSTs, answered at once."""

from __future__ import annotations

import logging

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from accounts.eventsub import inbox, webhook

logger = logging.getLogger(__name__)


@csrf_exempt
@require_POST
async def eventsub(request: HttpRequest) -> HttpResponse:
    """Twitch's EventSub webhook: no CSRF token or session, a signature instead.

    Checks the signature and age, keeps the message (`inbox.receive`: one insert,
    or the spool when the database is slow) and answers 204; the message is
    handled after the answer. A message id seen before is answered 204 too."""
    if not webhook.enabled():
        raise Http404("EventSub is not configured.")
    try:
        message = webhook.verify(request.headers, request.body)
    except webhook.UnreadableMessage as unreadable:
        logger.warning("refused an EventSub message: %s", unreadable)
        return HttpResponse("Bad Request", status=400, content_type="text/plain")
    except webhook.InvalidMessage as invalid:
        logger.warning("refused an EventSub message: %s", invalid)
        return HttpResponse("Forbidden", status=403, content_type="text/plain")
    if message.type == "webhook_callback_verification":
        challenge = message.body.get("challenge")
        if not isinstance(challenge, str):
            return HttpResponse("No challenge", status=400, content_type="text/plain")
        return HttpResponse(challenge, content_type="text/plain")
    await inbox.receive(message)
    return HttpResponse(status=204)
