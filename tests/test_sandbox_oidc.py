"""The sandbox's OpenID Connect, over real HTTP, against Twitch's "Getting tokens:
OIDC" guide: ID tokens from the code grant, the keys that sign them and their
rotation, discovery, UserInfo, and the forged ID tokens a site must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    Reply,
    approve_on_twitch,
    http,
    refresh,
)
from twitch_sandbox import Sandbox
from twitch_sandbox.oidc import FORGERIES, ISSUER

ASK_USERNAME = {"id_token": {"preferred_username": None}}


def code_for(
    sandbox: Sandbox,
    *,
    scopes: str = "openid",
    nonce: str | None = "the-nonce",
    claims: object = None,
) -> str:
    return sandbox.authorize(login="alice", scopes=scopes, nonce=nonce, claims=claims)


def exchange(sandbox: Sandbox, code: str) -> Reply:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
    }
    return http(sandbox, "POST", "oauth2/token", form=form)


def token_answer(sandbox: Sandbox, **authorize: Any) -> dict[str, Any]:
    reply = exchange(sandbox, code_for(sandbox, **authorize))
    assert reply.status == 200, reply.text
    return reply.json()


def id_token(sandbox: Sandbox, **authorize: Any) -> str:
    return token_answer(sandbox, **authorize)["id_token"]


def published_keys(sandbox: Sandbox) -> dict[str, dict[str, str]]:
    reply = http(sandbox, "GET", "oauth2/keys")
    assert reply.status == 200
    return {key["kid"]: key for key in reply.json()["keys"]}


def verified(sandbox: Sandbox, token: str) -> dict[str, Any]:
    """The claims, once signature, issuer, audience and expiry check out."""
    key = published_keys(sandbox)[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience=CLIENT_ID,
        issuer=ISSUER,
    )


def unverified(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


# ID tokens ------------------------------------------------------------------------


def test_a_code_for_openid_is_exchanged_for_an_id_token_signed_by_a_published_key(
    sandbox: Sandbox,
) -> None:
    answer = token_answer(sandbox)

    header = jwt.get_unverified_header(answer["id_token"])
    assert header["alg"] == "RS256"
    assert header["kid"] == sandbox.signing_key_id
    assert verified(sandbox, answer["id_token"])
    assert {"access_token", "refresh_token", "expires_in", "token_type"} <= set(answer)


def test_the_id_token_names_twitch_as_issuer_the_user_and_the_client(
    sandbox: Sandbox,
) -> None:
    claims = verified(sandbox, id_token(sandbox))

    # Twitch's issuer exactly, though the sandbox serves elsewhere.
    assert claims["iss"] == "https://id.twitch.tv/oauth2"
    assert claims["sub"] == sandbox.add_user("alice").id
    assert claims["aud"] == CLIENT_ID
    assert claims["azp"] == CLIENT_ID


def test_the_id_token_lives_fifteen_minutes(sandbox: Sandbox) -> None:
    claims = verified(sandbox, id_token(sandbox))

    assert claims["exp"] - claims["iat"] == 900


def test_the_id_token_echoes_the_nonce(sandbox: Sandbox) -> None:
    claims = verified(sandbox, id_token(sandbox, nonce="n-0S6_WzA2Mj"))

    assert claims["nonce"] == "n-0S6_WzA2Mj"


def test_the_id_token_has_no_nonce_when_the_authorize_request_had_none(
    sandbox: Sandbox,
) -> None:
    claims = verified(sandbox, id_token(sandbox, nonce=None))

    assert "nonce" not in claims


def test_preferred_username_is_the_display_name_when_asked_for(
    sandbox: Sandbox,
) -> None:
    claims = verified(sandbox, id_token(sandbox, claims=ASK_USERNAME))

    # Twitch puts the display name there, which may differ from the login.
    assert claims["preferred_username"] == sandbox.add_user("alice").display_name


def test_no_profile_claims_unless_asked_for(sandbox: Sandbox) -> None:
    claims = verified(sandbox, id_token(sandbox))

    assert set(claims) == {"iss", "sub", "aud", "azp", "exp", "iat", "nonce"}


def test_claims_asked_for_userinfo_stay_out_of_the_id_token(
    sandbox: Sandbox,
) -> None:
    asked = {"userinfo": {"preferred_username": None}}

    claims = verified(sandbox, id_token(sandbox, claims=asked))

    assert "preferred_username" not in claims


def test_email_claims_need_the_user_read_email_scope(sandbox: Sandbox) -> None:
    asked = {"id_token": {"email": None, "email_verified": None}}

    without = verified(sandbox, id_token(sandbox, claims=asked))
    with_scope = verified(
        sandbox, id_token(sandbox, scopes="openid user:read:email", claims=asked)
    )

    assert "email" not in without and "email_verified" not in without
    assert with_scope["email"] == "alice@users.sandbox.invalid"
    assert with_scope["email_verified"] is True


def test_no_id_token_without_the_openid_scope(sandbox: Sandbox) -> None:
    answer = token_answer(sandbox, scopes="chat:read", claims=ASK_USERNAME)

    assert "id_token" not in answer
    assert answer["access_token"]


def test_a_refresh_answers_no_id_token(sandbox: Sandbox) -> None:
    # "When the JWT ID tokens expire, they cannot be refreshed."
    answer = token_answer(sandbox)

    refreshed = refresh(sandbox, answer["refresh_token"])

    assert refreshed.status == 200
    assert "id_token" not in refreshed.json()


async def test_nonce_and_claims_ride_through_the_consent_form(
    sandbox: Sandbox,
) -> None:
    query = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "openid",
        "state": "the-state",
        "nonce": "the-nonce",
        "claims": json.dumps(ASK_USERNAME),
    }
    url = f"{sandbox.auth_base_url}authorize?{urlencode(query)}"

    back = await approve_on_twitch(url, login="carol")
    code = parse_qs(urlsplit(back).query)["code"][0]
    claims = verified(sandbox, exchange(sandbox, code).json()["id_token"])

    assert claims["nonce"] == "the-nonce"
    assert claims["preferred_username"] == "Carol"
    assert claims["sub"] == sandbox.add_user("carol").id


@pytest.mark.parametrize(
    "claims",
    ["not json", "[]", '"id_token"', '{"id_token": 1}', '{"userinfo": []}'],
)
def test_claims_that_are_not_a_json_object_of_objects_get_an_error_page(
    sandbox: Sandbox, claims: str
) -> None:
    query = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "openid",
        "claims": claims,
    }

    reply = http(sandbox, "GET", "oauth2/authorize", query=query)

    assert reply.status == 400
    assert reply.headers.get_content_type() == "text/html"
    assert "invalid claims" in reply.text
    assert "Location" not in reply.headers


def test_python_authorize_refuses_malformed_claims(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="claims"):
        code_for(sandbox, claims="{not json")


# Keys -------------------------------------------------------------------------------


def test_keys_are_rsa_public_keys_described_as_twitch_describes_them(
    sandbox: Sandbox,
) -> None:
    keys = published_keys(sandbox)

    assert list(keys) == [sandbox.signing_key_id]
    key = keys[sandbox.signing_key_id]
    assert set(key) == {"alg", "e", "kid", "kty", "n", "use"}  # nothing private
    assert (key["alg"], key["kty"], key["use"]) == ("RS256", "RSA", "sig")
    assert jwt.PyJWK(key).key.key_size == 2048


def test_rotating_signs_with_a_new_kid_and_keeps_the_old_key_listed(
    sandbox: Sandbox,
) -> None:
    before = id_token(sandbox)

    new_kid = sandbox.rotate_signing_key()
    after = id_token(sandbox)

    assert kid_of(after) == new_kid != kid_of(before)
    assert list(published_keys(sandbox)) == [kid_of(before), new_kid]
    assert verified(sandbox, before) and verified(sandbox, after)


def test_rotating_without_keeping_drops_the_old_key(sandbox: Sandbox) -> None:
    before = id_token(sandbox)

    new_kid = sandbox.rotate_signing_key(keep_old=False)

    assert list(published_keys(sandbox)) == [new_kid]
    assert kid_of(before) not in published_keys(sandbox)


def test_reset_goes_back_to_the_first_signing_key_alone(sandbox: Sandbox) -> None:
    first = sandbox.signing_key_id
    sandbox.rotate_signing_key()

    sandbox.reset()

    assert sandbox.signing_key_id == first
    assert list(published_keys(sandbox)) == [first]


# Discovery and UserInfo ----------------------------------------------------------


def test_discovery_names_twitchs_issuer_and_the_sandboxs_endpoints(
    sandbox: Sandbox,
) -> None:
    reply = http(sandbox, "GET", "oauth2/.well-known/openid-configuration")

    assert reply.status == 200
    document = reply.json()
    base = sandbox.auth_base_url
    assert document["issuer"] == "https://id.twitch.tv/oauth2"
    assert document["authorization_endpoint"] == base + "authorize"
    assert document["token_endpoint"] == base + "token"
    assert document["userinfo_endpoint"] == base + "userinfo"
    assert document["jwks_uri"] == base + "keys"
    assert document["response_types_supported"] == ["code"]
    assert document["subject_types_supported"] == ["public"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert document["scopes_supported"] == ["openid"]
    assert document["claims_parameter_supported"] is True
    assert {"sub", "aud", "preferred_username", "email"} <= set(
        document["claims_supported"]
    )


def userinfo(sandbox: Sandbox, token: str, scheme: str = "Bearer") -> Reply:
    headers = {"Authorization": f"{scheme} {token}"}
    return http(sandbox, "GET", "oauth2/userinfo", headers=headers)


def test_userinfo_says_whose_token_it_is(sandbox: Sandbox) -> None:
    access_token = token_answer(sandbox)["access_token"]

    reply = userinfo(sandbox, access_token)

    assert reply.status == 200
    body = reply.json()
    assert set(body) == {"aud", "exp", "iat", "iss", "sub"}
    assert body["sub"] == sandbox.add_user("alice").id
    assert body["aud"] == CLIENT_ID
    assert body["iss"] == "https://id.twitch.tv/oauth2"


def test_userinfo_answers_the_claims_asked_for_userinfo(sandbox: Sandbox) -> None:
    asked = {"userinfo": {"preferred_username": None, "picture": None}}
    access_token = token_answer(sandbox, claims=asked)["access_token"]

    body = userinfo(sandbox, access_token).json()

    assert body["preferred_username"] == "Alice"
    assert body["picture"].startswith("https://")


def test_userinfo_leaves_out_claims_asked_for_the_id_token_only(
    sandbox: Sandbox,
) -> None:
    access_token = token_answer(sandbox, claims=ASK_USERNAME)["access_token"]

    body = userinfo(sandbox, access_token).json()

    assert "preferred_username" not in body


def test_userinfo_keeps_answering_for_refreshed_tokens(sandbox: Sandbox) -> None:
    asked = {"userinfo": {"preferred_username": None}}
    first = token_answer(sandbox, claims=asked)

    refreshed = refresh(sandbox, first["refresh_token"]).json()["access_token"]

    assert userinfo(sandbox, refreshed).json()["preferred_username"] == "Alice"


@pytest.mark.parametrize("scheme", ["Bearer", "OAuth"])
def test_userinfo_refuses_a_dead_token_or_another_scheme(
    sandbox: Sandbox, scheme: str
) -> None:
    answer = token_answer(sandbox)
    sandbox.disconnect_user("alice")
    live = token_answer(sandbox)["access_token"]

    dead = userinfo(sandbox, answer["access_token"])
    wrong_scheme = userinfo(sandbox, live, scheme="OAuth")
    missing = http(sandbox, "GET", "oauth2/userinfo")

    assert [r.status for r in (dead, wrong_scheme, missing)] == [401, 401, 401]
    assert dead.json()["status"] == 401


def test_userinfo_refuses_a_token_without_openid(sandbox: Sandbox) -> None:
    access_token = token_answer(sandbox, scopes="chat:read")["access_token"]

    reply = userinfo(sandbox, access_token)

    assert reply.status == 403
    assert reply.json()["message"] == "missing scope openid"


def test_oidc_requests_are_recorded_by_endpoint(sandbox: Sandbox) -> None:
    published_keys(sandbox)
    published_keys(sandbox)
    http(sandbox, "GET", "oauth2/.well-known/openid-configuration")
    userinfo(sandbox, "nope")

    assert sandbox.count("keys") == 2
    assert sandbox.count("openid_configuration") == 1
    assert sandbox.count("userinfo") == 1


def test_the_keys_endpoint_can_fail_like_any_other(sandbox: Sandbox) -> None:
    sandbox.fail("keys", status=503, times=1)

    failed = http(sandbox, "GET", "oauth2/keys")
    recovered = http(sandbox, "GET", "oauth2/keys")

    assert (failed.status, recovered.status) == (503, 200)


# Forged ID tokens ------------------------------------------------------------------


def test_an_unknown_key_forgery_names_a_kid_the_keys_lack(sandbox: Sandbox) -> None:
    sandbox.forge_id_token("unknown_key")

    token = id_token(sandbox)

    assert kid_of(token) not in published_keys(sandbox)
    assert unverified(token)["sub"] == sandbox.add_user("alice").id


def test_a_bad_signature_forgery_names_the_signing_kid_but_does_not_verify(
    sandbox: Sandbox,
) -> None:
    sandbox.forge_id_token("bad_signature")

    token = id_token(sandbox)

    assert kid_of(token) == sandbox.signing_key_id
    with pytest.raises(jwt.InvalidSignatureError):
        verified(sandbox, token)


@pytest.mark.parametrize(
    ("kind", "claim", "check"),
    [
        ("expired", "exp", lambda exp, real: exp < real["iat"] - 60),
        ("wrong_audience", "aud", lambda aud, real: aud != CLIENT_ID),
        ("wrong_issuer", "iss", lambda iss, real: iss != ISSUER),
        ("wrong_nonce", "nonce", lambda nonce, real: nonce != "the-nonce"),
        ("missing_nonce", "nonce", lambda nonce, real: nonce is None),
        ("non_digit_subject", "sub", lambda sub, real: not sub.isdigit()),
    ],
)
def test_a_claim_forgery_is_properly_signed_and_wrong_in_that_claim_only(
    sandbox: Sandbox, kind: str, claim: str, check: Any
) -> None:
    real = verified(sandbox, id_token(sandbox))
    sandbox.forge_id_token(kind)

    token = id_token(sandbox)

    forged = jwt.decode(
        token,
        jwt.PyJWK(published_keys(sandbox)[kid_of(token)]).key,
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_aud": False},
    )
    assert check(forged.get(claim), real)
    others = {k: v for k, v in forged.items() if k not in (claim, "exp", "iat")}
    assert others == {k: v for k, v in real.items() if k not in (claim, "exp", "iat")}


def test_a_missing_forgery_leaves_out_the_id_token_only(sandbox: Sandbox) -> None:
    sandbox.forge_id_token("missing")

    answer = token_answer(sandbox)

    assert "id_token" not in answer
    assert sandbox.is_access_token_valid(answer["access_token"])


def test_an_alg_none_forgery_is_unsigned(sandbox: Sandbox) -> None:
    sandbox.forge_id_token("alg_none")

    token = id_token(sandbox)

    assert jwt.get_unverified_header(token)["alg"] == "none"
    assert token.endswith(".")
    assert unverified(token)["aud"] == CLIENT_ID


def test_an_hs256_forgery_is_signed_with_the_public_key_as_hmac_secret(
    sandbox: Sandbox,
) -> None:
    sandbox.forge_id_token("hs256")

    token = id_token(sandbox)

    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    public = jwt.PyJWK(published_keys(sandbox)[kid_of(token)]).key
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input, _, signature = token.rpartition(".")
    expected = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected


def test_forgeries_spoil_the_next_times_id_tokens_then_stop(
    sandbox: Sandbox,
) -> None:
    sandbox.forge_id_token("wrong_audience", times=2)

    tokens = [id_token(sandbox) for _ in range(3)]

    assert [unverified(t)["aud"] for t in tokens] == [
        "another-client-id",
        "another-client-id",
        CLIENT_ID,
    ]


def test_forgeries_queue_up_in_order(sandbox: Sandbox) -> None:
    sandbox.forge_id_token("missing")
    sandbox.forge_id_token("wrong_issuer")

    first, second = token_answer(sandbox), token_answer(sandbox)

    assert "id_token" not in first
    assert unverified(second["id_token"])["iss"] == ISSUER + "/"


def test_answers_without_an_id_token_do_not_use_up_a_forgery(
    sandbox: Sandbox,
) -> None:
    sandbox.forge_id_token("wrong_audience")
    answer = token_answer(sandbox, scopes="chat:read")
    refresh(sandbox, answer["refresh_token"])

    token = id_token(sandbox)

    assert unverified(token)["aud"] == "another-client-id"


def test_forging_an_unknown_kind_is_refused(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="unknown forgery"):
        sandbox.forge_id_token("nonsense")
    with pytest.raises(ValueError, match="at least 1"):
        sandbox.forge_id_token("expired", times=0)


@pytest.mark.parametrize("drop", ["clear_faults", "reset"])
def test_clear_faults_and_reset_drop_pending_forgeries(
    sandbox: Sandbox, drop: str
) -> None:
    sandbox.forge_id_token("missing", times=3)

    getattr(sandbox, drop)()

    assert "id_token" in token_answer(sandbox)


def test_every_forgery_kind_is_documented_on_the_sandbox() -> None:
    documented = Sandbox.forge_id_token.__doc__ or ""

    assert all(f'"{kind}"' in documented for kind in FORGERIES)


def test_control_endpoints_rotate_the_key_and_forge_id_tokens(
    sandbox: Sandbox,
) -> None:
    old_kid = sandbox.signing_key_id

    rotated = http(
        sandbox, "POST", "_sandbox/rotate-signing-key", json_body={"keep_old": False}
    )
    forged = http(
        sandbox,
        "POST",
        "_sandbox/forge-id-token",
        json_body={"kind": "expired", "times": 1},
    )
    bad = http(sandbox, "POST", "_sandbox/forge-id-token", json_body={"kind": "x"})

    assert rotated.status == 200
    assert rotated.json() == sandbox.signing_key_id != old_kid
    assert list(published_keys(sandbox)) == [rotated.json()]
    assert forged.json() == {"ok": True}
    assert bad.status == 400
    with pytest.raises(jwt.ExpiredSignatureError):
        verified(sandbox, id_token(sandbox))
