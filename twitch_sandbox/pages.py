"""The two HTML pages a browser sees: consent and error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

DEFAULT_LOGIN = "sandboxuser"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - Twitch sandbox</title>
<style>
body {{ font-family: sans-serif; max-width: 32rem; margin: 3rem auto; }}
.sandbox {{ color: #9146ff; font-size: .8rem; text-transform: uppercase; }}
</style>
</head>
<body>
<p class="sandbox">Twitch sandbox &mdash; not the real Twitch</p>
{content}
</body>
</html>
"""


def consent_page(
    *,
    client_id: str,
    scopes: Sequence[str],
    hidden: Mapping[str, str],
    login: str = DEFAULT_LOGIN,
    error: str | None = None,
) -> str:
    if scopes:
        items = "\n".join(f"<li><code>{escape(s)}</code></li>" for s in scopes)
        asks = f"<p>It asks for these permissions:</p>\n<ul>\n{items}\n</ul>"
    else:
        asks = "<p>It asks for no permissions beyond your public profile.</p>"
    inputs = "\n".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in hidden.items()
    )
    problem = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    content = f"""<h1>Authorize {escape(client_id)}</h1>
<p>The application <strong>{escape(client_id)}</strong> wants to access your
Twitch account.</p>
{asks}
{problem}
<form method="post" action="/oauth2/authorize">
{inputs}
<p><label for="login">Log in as (Twitch login)</label>
<input type="text" id="login" name="login" value="{escape(login)}" required></p>
<p><button type="submit" name="action" value="authorize">Authorize</button>
<button type="submit" name="action" value="cancel">Cancel</button></p>
</form>"""
    return _PAGE.format(title="Authorize", content=content)


def error_page(message: str) -> str:
    content = f'<h1>Error</h1>\n<p class="error" role="alert">{escape(message)}</p>'
    return _PAGE.format(title="Error", content=content)
