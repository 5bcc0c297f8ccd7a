"""Auth strategies: static token headers and OAuth2 client credentials; secrets reach the masker."""

from __future__ import annotations

import pytest
import requests
from airflow.sdk.log import redact

from airflow_audience_provider.core.auth import OAuth2ClientCredentials, TokenCache, TokenHeaderAuth, mask_secret
from airflow_audience_provider.core.errors import AudienceAuthenticationError


def prepared(auth) -> requests.PreparedRequest:
    return auth(requests.Request("GET", "https://vendor.example/x").prepare())


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [(None, "raw-token-12345"), ("OAuth", "OAuth raw-token-12345"), ("Bearer", "Bearer raw-token-12345")],
)
def test_token_header_styles(scheme, expected):
    assert prepared(TokenHeaderAuth("raw-token-12345", scheme=scheme)).headers["Authorization"] == expected


def test_token_header_custom_header_and_repr_without_token():
    auth = TokenHeaderAuth("raw-token-67890", header="X-Api-Key")
    assert prepared(auth).headers["X-Api-Key"] == "raw-token-67890"
    assert "raw-token-67890" not in repr(auth)


def test_static_token_is_masked():
    TokenHeaderAuth("static-token-for-masking-1")
    assert redact("sent static-token-for-masking-1 to the vendor") == "sent *** to the vendor"


def test_mask_secret_ignores_empty_values():
    mask_secret("")  # must not raise, nor mask everything
    assert redact("nothing to hide") == "nothing to hide"


class TokenEndpoint:
    """A counting stand-in for the token POST."""

    def __init__(self, expires_in: float | None = 100.0) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.expires_in = expires_in

    def __call__(self, url: str, form: dict[str, str]) -> dict:
        self.calls.append((url, form))
        answer = {"access_token": f"minted-access-token-{len(self.calls):03d}", "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return answer


def oauth(clock, endpoint, refresh_margin=10.0) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(
        "https://vendor.example/oauth2/token",
        "client-id-1",
        "client-secret-abcdef",
        endpoint,
        refresh_margin=refresh_margin,
        clock=clock,
    )


def test_token_is_fetched_lazily_and_cached(clock):
    endpoint = TokenEndpoint()
    auth = oauth(clock, endpoint)
    assert endpoint.calls == []
    assert auth.token() == "minted-access-token-001"
    assert auth.token() == "minted-access-token-001"
    assert prepared(auth).headers["Authorization"] == "Bearer minted-access-token-001"
    assert len(endpoint.calls) == 1
    url, form = endpoint.calls[0]
    assert url == "https://vendor.example/oauth2/token"
    assert form == {
        "grant_type": "client_credentials",
        "client_id": "client-id-1",
        "client_secret": "client-secret-abcdef",
    }


def test_token_is_refreshed_refresh_margin_before_expiry(clock):
    endpoint = TokenEndpoint(expires_in=100)
    auth = oauth(clock, endpoint, refresh_margin=10)
    auth.token()
    clock.advance(89.9)
    assert auth.token() == "minted-access-token-001"  # still more than the margin left
    clock.advance(0.1)
    assert auth.token() == "minted-access-token-002"  # 10 s before expiry: refreshed
    assert auth.tokens_minted == 2


def test_invalidate_forgets_the_token(clock):
    endpoint = TokenEndpoint()
    auth = oauth(clock, endpoint)
    auth.token()
    auth.invalidate()
    assert auth.token() == "minted-access-token-002"
    assert len(endpoint.calls) == 2


def test_answer_without_access_token_is_an_authentication_error(clock):
    auth = oauth(clock, lambda url, form: {"error": "invalid_client"})
    with pytest.raises(AudienceAuthenticationError, match="without an access_token"):
        auth.token()


def test_minted_tokens_and_client_secret_are_masked(clock):
    auth = oauth(clock, TokenEndpoint())
    token = auth.token()
    line = f"Authorization: Bearer {token}; secret client-secret-abcdef"
    assert redact(line) == "Authorization: Bearer ***; secret ***"
    assert "client-secret-abcdef" not in repr(auth)


def test_token_without_expires_in_is_kept_until_invalidated(clock):
    endpoint = TokenEndpoint(expires_in=None)
    auth = oauth(clock, endpoint)
    for _ in range(5):
        auth.token()
        clock.advance(3600)
    assert len(endpoint.calls) == 1  # not one token per request
    auth.invalidate()  # what the transport does on a 401
    assert auth.token() == "minted-access-token-002"


def test_lifetime_shorter_than_the_margin_still_caches(clock):
    endpoint = TokenEndpoint(expires_in=30)
    auth = oauth(clock, endpoint, refresh_margin=60)
    auth.token()
    clock.advance(14)
    auth.token()
    assert len(endpoint.calls) == 1  # refreshed at half its life, not on every call
    clock.advance(1)
    auth.token()
    assert len(endpoint.calls) == 2


# -- a token cache shared by several auth objects ------------------------------------------------


def shared(clock, endpoint, cache, secret="client-secret-abcdef") -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(
        "https://vendor.example/oauth2/token",
        "client-id-1",
        secret,
        endpoint,
        refresh_margin=10,
        clock=clock,
        cache=cache,
    )


def test_a_shared_cache_serves_one_token_to_every_auth_of_the_same_identity(clock):
    endpoint, cache = TokenEndpoint(), TokenCache()
    first, second = shared(clock, endpoint, cache), shared(clock, endpoint, cache)
    assert first.token() == second.token() == "minted-access-token-001"
    assert len(endpoint.calls) == 1
    other_secret = shared(clock, endpoint, cache, secret="another-secret-98765")
    assert other_secret.token() == "minted-access-token-002"  # another identity, another token
    assert "client-secret-abcdef" not in repr(cache._slots) and "another-secret-98765" not in repr(cache._slots)


def test_invalidating_a_token_already_replaced_keeps_the_new_one(clock):
    endpoint, cache = TokenEndpoint(), TokenCache()
    first, second = shared(clock, endpoint, cache), shared(clock, endpoint, cache)
    old = first.token()
    first.invalidate(old)  # first saw a 401 and forgot the token...
    assert second.token() == "minted-access-token-002"  # ...second minted the replacement
    second.invalidate(old)  # second's own late 401 for the old token must not drop the new one
    assert first.token() == "minted-access-token-002"
    assert len(endpoint.calls) == 2


def test_atoken_mints_off_the_event_loop(clock):
    import asyncio

    endpoint, cache = TokenEndpoint(), TokenCache()
    auths = [shared(clock, endpoint, cache) for _ in range(5)]

    async def many() -> list[str]:
        return await asyncio.gather(*(auth.atoken() for auth in auths))

    assert set(asyncio.run(many())) == {"minted-access-token-001"}
    assert len(endpoint.calls) == 1
