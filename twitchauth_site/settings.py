"""Settings for twitchauth: every knob comes from the environment (or `.env`).

Each variable is documented in `.env.example` and the README. Misconfiguration that
Django itself would not notice is reported by the system checks in `accounts/checks.py`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import environ
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE

BASE_DIR = Path(__file__).resolve().parent.parent


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
# No default on purpose: a production site must never run on a guessable key.
SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "csp",
    "accounts",
]

MIDDLEWARE = [
    # Django's, WhiteNoise's and django-csp's own middleware. Run as a sync chain on
    # the request's own thread: see OnTheRequestThread below.
    "django.middleware.security.SecurityMiddleware",
    # The site's own static files, answered before the session, CSRF and user
    # middleware, which they do not need.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Early, so that every response (error pages included) carries the policy.
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Right inside the session middleware: a session the database cannot save
    # after the view is the 503 page too (accounts/web/middleware.py).
    "accounts.web.middleware.SessionSaveMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A database that refuses or does not answer is a 503 page, not a 500.
    "accounts.web.middleware.DatabaseUnavailableMiddleware",
    # Sync only and below all of the above, so Django runs them on the request's
    # thread in one trip, not one trip per hook; loads the signed-in user there.
    "accounts.web.middleware.OnTheRequestThread",
    # Last, as django-axes asks: it turns a lockout into our 429 page.
    "axes.middleware.AxesMiddleware",
]
# Database sessions, each save one statement (accounts/web/sessions.py).
SESSION_ENGINE = "accounts.web.sessions"
# Messages ("Connected as ...") travel in a signed cookie: no session write for them.
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"

# Sign-in throttling (django-axes), for /accounts/login/ and /admin/login/ alike:
# after 5 failed attempts for one username from one client address, further
# attempts answer 429 for 15 minutes; a success resets the count. Attempts live in
# the database, so every worker and machine shares them; staff see and clear them
# in the admin (Axes: access attempts).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    # Sessions begun with Sign in with Twitch, checked again at every request.
    "accounts.oauth.signin.TwitchSignInBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.web.views.sign_in_locked_out"
# Axes' database handler, except that a sign-in with Twitch keeps failed password
# attempts counted (it proves the Twitch account, not the password).
AXES_HANDLER = "accounts.web.signin.KeepPasswordFailures"
# The client address is REMOTE_ADDR only: behind a proxy, uvicorn's
# --proxy-headers with --forwarded-allow-ips set to the proxy's address puts the
# real client there. Trusting X-Forwarded-For from anyone would let an attacker
# pick a fresh address for every guess.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
# Passwords never reach axes' logs or tables; only usernames and addresses do.
AXES_SENSITIVE_PARAMETERS = ["password"]

ROOT_URLCONF = "twitchauth_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
            ],
        },
    },
]

WSGI_APPLICATION = "twitchauth_site.wsgi.application"
ASGI_APPLICATION = "twitchauth_site.asgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite is a real default here, so make it hold up under concurrent async
    # requests and overlapping cron runs: WAL lets readers and one writer work
    # together, IMMEDIATE takes the write lock at BEGIN (no deadlocking lock
    # upgrades) and the timeout makes a second writer wait instead of failing.
    # Django's own backend; the site's writes take turns (accounts/db.py).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Each request thread is reused (twitchauth_site/asgi.py), so its connection
    # can be too, rather than opened and set up again for every request.
    DATABASES["default"]["CONN_MAX_AGE"] = 60
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that accepts connections but never answers must not hang pages:
    # connecting gives up after DATABASE_CONNECT_TIMEOUT, and the server ends any
    # statement (a lock wait included) after DATABASE_STATEMENT_TIMEOUT.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "connect_timeout": env.int("DATABASE_CONNECT_TIMEOUT", default=4),
            # Parameters travel apart from the query (and repeated queries are
            # prepared) instead of being quoted into it here: about 1 ms of CPU less
            # per Connect flow.
            "server_side_binding": True,
            "options": "-c statement_timeout="
            f"{env.int('DATABASE_STATEMENT_TIMEOUT', default=30) * 1000}",
            # Under ASGI every request runs on a thread of its own, so Django's
            # persistent connections cannot help: without a pool each request
            # would open (and PostgreSQL fork) a connection of its own.
            "pool": {
                "min_size": env.int("DATABASE_POOL_MIN", default=2),
                "max_size": env.int("DATABASE_POOL_MAX", default=10),
                "timeout": env.int("DATABASE_CONNECT_TIMEOUT", default=4),
            },
        }
    )

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation."
        "UserAttributeSimilarityValidator"
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` gathers the admin's CSS and scripts here, under names
# that carry a hash of their content, with gzipped copies; the site serves them
# itself (WhiteNoise), hashed names cached for a year. With DEBUG, pages link the
# plain names and the files come straight from the apps.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default="") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# HTTPS by default in production; DEBUG (local development) runs on plain HTTP.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
# HSTS is opt-in: once browsers have seen it, plain HTTP is gone for that long.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
# Load balancers probe the health check over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    # Only behind a proxy that sets X-Forwarded-Proto itself (see the README).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Twitch: the app registered at dev.twitch.tv (or the local sandbox).
TWITCH_CLIENT_ID = env.str("TWITCH_CLIENT_ID", default="")
TWITCH_CLIENT_SECRET = env.str("TWITCH_CLIENT_SECRET", default="")
TWITCH_REDIRECT_URI = env.str("TWITCH_REDIRECT_URI", default="")
# What every connection needs; a connection that lacks one of them "needs more
# permissions" until the user reconnects.
TWITCH_SCOPES = env.str("TWITCH_SCOPES", default="chat:read chat:edit").split()
# What a feature page may ask for on top (POST /twitch/connect/ with scopes=...).
TWITCH_OPTIONAL_SCOPES = env.str("TWITCH_OPTIONAL_SCOPES", default="").split()
# A second connection per person, the account their chat bot speaks as (role
# "bot"): on when its scopes are set, e.g. "user:bot user:read:chat user:write:chat".
TWITCH_BOT_SCOPES = env.str("TWITCH_BOT_SCOPES", default="").split()
TWITCH_BOT_OPTIONAL_SCOPES = env.str("TWITCH_BOT_OPTIONAL_SCOPES", default="").split()
# Further roles, declared here (accounts/roles.py shows the shape), e.g.
# {"editor": {"label": "Editor account", "scopes": ["channel:manage:broadcast"]}}.
TWITCH_EXTRA_ROLES: dict[str, dict[str, object]] = {}
# OpenID Connect: Connect also asks for `openid`, and the callback learns who the
# user is from the verified ID token: one round trip to Twitch before the answer,
# not two. Off only to compare (bench/callback.py) or for a Twitch stand-in without
# it; Sign in with Twitch needs it.
TWITCH_OPENID_CONNECT = env.bool("TWITCH_OPENID_CONNECT", default=True)
# Sign in with Twitch (for accounts already linked) refuses staff and superusers
# unless this is on: a Twitch account must not become a way into /admin.
TWITCH_SIGNIN_STAFF = env.bool("TWITCH_SIGNIN_STAFF", default=False)
TWITCH_AUTH_BASE_URL = env.str(
    "TWITCH_AUTH_BASE_URL", default="https://id.twitch.tv/oauth2/"
)
TWITCH_API_BASE_URL = env.str(
    "TWITCH_API_BASE_URL", default="https://api.twitch.tv/helix/"
)
# EventSub: Twitch tells the site at once when a user disconnects the app. Off
# unless the callback URL (https://…/twitch/eventsub/, port 443) is set; the
# secret (10-100 ASCII characters) signs every message Twitch sends.
TWITCH_EVENTSUB_CALLBACK_URL = env.str("TWITCH_EVENTSUB_CALLBACK_URL", default="")
TWITCH_EVENTSUB_SECRET = env.str("TWITCH_EVENTSUB_SECRET", default="")
# While rotating the secret: the one it replaces, still accepted until
# `manage.py eventsub subscribe --replace` has moved every subscription over.
TWITCH_EVENTSUB_PREVIOUS_SECRET = env.str("TWITCH_EVENTSUB_PREVIOUS_SECRET", default="")
# The EventSub types the site wants for every connected account, space-separated,
# `type` or `type:version` (accounts/eventsub/catalogue.py lists the known ones):
# e.g. "stream.online stream.offline channel.update:2". user.authorization.revoke
# is always subscribed while EventSub is on.
TWITCH_EVENTSUB_TYPES = env.str("TWITCH_EVENTSUB_TYPES", default="")
# Days a received EventSub message stays in the admin (and known, against a
# redelivery) once handled.
TWITCH_EVENTSUB_KEEP_DAYS = env.int("TWITCH_EVENTSUB_KEEP_DAYS", default=7)

# Fernet keys for the tokens at rest: the first encrypts, every key decrypts.
TOKEN_ENCRYPTION_KEYS = env.list("TOKEN_ENCRYPTION_KEYS", default=[])
if DEBUG and not TOKEN_ENCRYPTION_KEYS:
    # Local development only: a key derived from SECRET_KEY, so a newcomer needs no
    # setup. Outside DEBUG an empty list is a system-check error (accounts.E006).
    import base64
    import hashlib

    TOKEN_ENCRYPTION_KEYS = [
        base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()
    ]

# Twitch requires every kept token to be validated at least once an hour, and audits
# it. `refresh_tokens` validates a token once this many minutes have passed since its
# last validation: 40, with cron every 15 minutes or more often, keeps every gap at or
# under 55 minutes (README, "Keeping tokens alive"). accounts.E010 refuses 60 or more.
TOKEN_VALIDATE_AFTER = timedelta(
    minutes=env.int("TOKEN_VALIDATE_AFTER_MINUTES", default=40)
)

# Where the refresh engine notes token pairs Twitch issued before the database has
# stored them (accounts/tokens/spool.py). Local to each machine; readable by the
# owner only.
TOKEN_SPOOL_DIR = Path(
    env.str("TOKEN_SPOOL_DIR", default="") or BASE_DIR / "token-spool"
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "accounts": {"level": env.str("LOG_LEVEL", default="INFO")},
    },
}

# Content-Security-Policy (django-csp): scripts and styles from this site only, our
# inline <style> by nonce. Style attributes stay allowed (the admin and our status
# badges use them; CSS in an attribute cannot run code). Forms may post here and be
# redirected to Twitch's authorize page.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, NONCE],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF, _origin(TWITCH_AUTH_BASE_URL)],
    }
}
