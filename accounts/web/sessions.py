"""Django's database sessions, saved in one statement instead of three, in this
process's writer turn (accounts/db.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends import db
from django.contrib.sessions.backends.base import UpdateError
from django.db import DatabaseError, router

from accounts.db import DATABASE_UNAVAILABLE, writer_turn


class SessionStore(db.SessionStore):
    """Saving an existing session is one UPDATE, not BEGIN, UPDATE, COMMIT: a
    single statement is atomic by itself (Django's transaction is there for the
    INSERT of a new session, which is left to Django). Every request that
    changes its session saves it, so this is two round trips fewer each time.

    `save_ahead` lets the site's middleware save the session just before Django's
    SessionMiddleware would (accounts/web/middleware.py says why); Django's save
    that follows is then skipped, so it is still one statement."""

    # The key and data `save_ahead` wrote, until the next save.
    saved_ahead: tuple[str | None, dict[str, Any]] | None = None

    def save(self, must_create: bool = False) -> None:
        written, self.saved_ahead = self.saved_ahead, None
        if written and written == (self.session_key, dict(self.items())):
            # Saved a moment ago, for this response, and not changed since:
            # Django's SessionMiddleware, which calls this, then only sets the
            # cookie.
            return
        if must_create or self.session_key is None:
            # A new session: Django's INSERT, in its transaction.
            with writer_turn(router.db_for_write(self.model)):
                return super().save(must_create)
        session = self.create_model_instance(dict(self.items()))
        using = router.db_for_write(self.model, instance=session)
        try:
            with writer_turn(using):
                session.save(force_update=True, using=using)
        except DATABASE_UNAVAILABLE:
            # A locked or unreachable database, not a vanished session: the
            # middleware makes it the 503 page. (Django's own store calls it
            # UpdateError too, and the user gets a 400 that blames a logout.)
            raise
        except DatabaseError as error:
            # As Django's: the session was deleted meanwhile (e.g. a logout in
            # another tab); the middleware turns this into SessionInterrupted.
            raise UpdateError from error

    def save_ahead(self) -> None:
        """Save now; the next `save()` (Django's SessionMiddleware's, after the
        response) then writes nothing, unless the session changed meanwhile."""
        self.save()
        self.saved_ahead = (self.session_key, dict(self.items()))
