"""Django's database sessions, saved in one statement instead of three."""

from __future__ import annotations

from django.contrib.sessions.backends import db
from django.contrib.sessions.backends.base import UpdateError
from django.db import DatabaseError, router

from accounts.web.middleware import DATABASE_UNAVAILABLE


class SessionStore(db.SessionStore):
    """Saving an existing session is one UPDATE, not BEGIN, UPDATE, COMMIT: a
    single statement is atomic by itself (Django's transaction is there for the
    INSERT of a new session, which is left to Django). Every request that
    changes its session saves it, so this is two round trips fewer each time."""

    def save(self, must_create: bool = False) -> None:
        if must_create or self.session_key is None:
            return super().save(must_create)
        session = self.create_model_instance(self._get_session())
        using = router.db_for_write(self.model, instance=session)
        try:
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
