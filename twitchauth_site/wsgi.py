"""WSGI entry point, for management tooling only: the OAuth views are async."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "twitchauth_site.settings")

application = get_wsgi_application()
