from __future__ import annotations

from typing import Any

from django.db import models

from accounts import crypto


class EncryptedTextField(models.TextField):
    """Text that Python code sees in clear and the database only ever sees encrypted.

    An empty string stays empty, so a wiped secret is visibly absent in the table.
    """

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        if not value:
            return value
        return crypto.decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if not value:
            return value
        return crypto.encrypt(value)
