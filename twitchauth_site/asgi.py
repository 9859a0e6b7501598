"""ASGI entry point: the OAuth views are async, so an ASGI server serves the site."""

from __future__ import annotations

import logging
import os

from django.conf import settings
from django.core.asgi import get_asgi_application

from twitchauth_site.log_filters import RedactOAuthParameters

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "twitchauth_site.settings")

application = get_asgi_application()

# uvicorn's access log would otherwise record the callback's code in its URL.
logging.getLogger("uvicorn.access").addFilter(RedactOAuthParameters())

if settings.DEBUG:
    # runserver serves static files itself; under uvicorn in development we do it
    # here. In production the proxy serves `collectstatic` output (see README).
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    application = ASGIStaticFilesHandler(application)
