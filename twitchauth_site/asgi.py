"""ASGI entry point: the OAuth views are async, so an ASGI server serves the site."""

from __future__ import annotations

import gc
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from asgiref.typing import (
    ASGI3Application,
    ASGIReceiveCallable,
    ASGISendCallable,
    Scope,
)
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.db import connections

from twitchauth_site.log_filters import RedactOAuthParameters

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "twitchauth_site.settings")


class ReusingRequestThreads:
    """ASGI middleware around Django: each request's sync thread is an idle one
    from earlier requests rather than a new one.

    Django runs a request's sync code (the ORM, sessions) on a thread of its own,
    and starts that thread for every request: under a crowd, starting threads was
    a tenth of the site's CPU. Here each request runs in asgiref's
    `ThreadSensitiveContext` with an executor of one idle thread (asgiref's
    documented way to choose the thread); Django's own context inside it, made
    without an executor, is then a no-op that uses ours. A request still has its
    thread to itself while it runs; only its start is saved, and the thread's
    database connection can last (CONN_MAX_AGE) as under WSGI.
    """

    # Threads kept for later requests. After a burst, threads beyond this many
    # close their database connections and end (SQLite's stay open otherwise).
    KEEP_IDLE = 64

    def __init__(self, application: ASGI3Application) -> None:
        self.application = application
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            # Django's own refusal, with its own message.
            return await self.application(scope, receive, send)
        executor = self._idle.pop() if self._idle else _one_thread()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.application(scope, receive, send)
        finally:
            if len(self._idle) < self.KEEP_IDLE:
                self._idle.append(executor)
            else:
                executor.submit(connections.close_all)
                executor.shutdown(wait=False)


def _one_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-request")


application = ReusingRequestThreads(get_asgi_application())

if not settings.DEBUG:
    # When a request starts, Django checks its thread's database connection (age,
    # errors) and clears the DEBUG query log: sync receivers, so a trip to the
    # request's thread and back each. A reused thread's connection was checked when
    # its last request ended (request_finished), and without DEBUG there is no
    # query log. Signal.disconnect is public; the two receivers are Django's own.
    from django.core.signals import request_started
    from django.db import close_old_connections, reset_queries

    request_started.disconnect(close_old_connections)
    request_started.disconnect(reset_queries)

# Refuse to serve without usable encryption keys: every token the site stores or
# reads would fail. (`manage.py check` names the same problem as accounts.E005/E006.)
if not settings.DEBUG:
    from django.core.exceptions import ImproperlyConfigured

    from accounts.checks import check_encryption_keys

    if problems := check_encryption_keys():
        raise ImproperlyConfigured(
            "; ".join(f"{p.id}: {p.msg}" for p in problems)
            + " The site does not start without usable TOKEN_ENCRYPTION_KEYS."
        )

# uvicorn's access log would otherwise record the callback's code in its URL.
logging.getLogger("uvicorn.access").addFilter(RedactOAuthParameters())

# Everything loaded so far (Django, the apps, their modules) lives as long as the
# process: out of the garbage collector's sight, a full collection no longer walks
# it all (pauses of tens of milliseconds under load).
gc.freeze()
