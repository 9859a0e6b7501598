"""ASGI entry point: the OAuth views are async, so an ASGI server serves the site."""

from __future__ import annotations

import logging
import os

from django.conf import settings
from django.core.asgi import get_asgi_application

from twitchauth_site.log_filters import RedactOAuthParameters

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "twitchauth_site.settings")

application = get_asgi_application()

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

if settings.DEBUG:
    # runserver serves static files itself; under uvicorn in development we do it
    # here. In production the proxy serves `collectstatic` output (see README).
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = ASGIStaticFilesHandler(application)
