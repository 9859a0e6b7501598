"""Test settings: the real settings module, fed a test environment.

DATABASE_URL decides the database (SQLite by default, PostgreSQL in CI's second
run). The Twitch URLs are pointed at the sandbox by a fixture once it has a port.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("SECRET_KEY", "tests-only-not-secret")
os.environ.setdefault(
    "TOKEN_ENCRYPTION_KEYS", "xpJvb1cyhZc6xXcf2XbZDfuBb8d8Fh1mqqxYDXwzDWw="
)
os.environ.setdefault("TWITCH_CLIENT_ID", "sandbox-client-id")
os.environ.setdefault("TWITCH_CLIENT_SECRET", "sandbox-client-secret")
os.environ.setdefault("TWITCH_REDIRECT_URI", "http://testserver/twitch/callback/")
os.environ.setdefault("SECURE_SSL_REDIRECT", "False")
os.environ.setdefault("SESSION_COOKIE_SECURE", "False")
os.environ.setdefault("CSRF_COOKIE_SECURE", "False")
os.environ["DEBUG"] = "False"

from twitchauth_site.settings import *  # noqa: E402,F403
from twitchauth_site.settings import DATABASES, STORAGES  # noqa: E402

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not Django's in-memory default: WAL, the busy timeout and other
    # processes (the concurrency tests) only exist for a real file.
    # One per test process, so two runs at once never share (and delete) a file.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"twitchauth-test-{os.getpid()}.db")
    }

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# No collectstatic before the tests: pages link static files by their own names, and
# WhiteNoise finds each in its app when asked, as with DEBUG. The deployed way
# (collected, hashed, compressed) is tested in tests/test_static.py.
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
