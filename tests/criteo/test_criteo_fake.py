"""The Criteo fake over raw HTTP: quota headers, version sunset headers, the movable clock."""

from __future__ import annotations

import time

import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_audience_provider.sandbox.criteo import CriteoFake


def _token(criteo) -> str:
    form = {
        "client_id": criteo.client_id,
        "client_secret": criteo.connection("")["password"],
        "grant_type": "client_credentials",
    }
    return requests.post(f"{criteo.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]


def test_quota_answers_429_with_the_ratelimit_headers(criteo):
    criteo.configure(calls_per_minute=2, rate_window_seconds=30)
    headers = {"Authorization": f"Bearer {_token(criteo)}"}
    url = f"{criteo.base_url}/2026-07/retail-media/me"
    assert [requests.get(url, headers=headers, timeout=10).status_code for _ in range(2)] == [200, 200]
    refused = requests.get(url, headers=headers, timeout=10)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit"] == "2" and refused.headers["x-ratelimit-remaining"] == "0"
    assert 0 < float(refused.headers["x-ratelimit-reset"]) - time.time() <= 30
    assert "Retry-After" not in refused.headers
    assert refused.json()["errors"][0]["type"] == "quota"


def test_quota_counts_every_lists_calls_in_one_window_and_zero_turns_it_off(criteo):
    """One app's amendments of different lists share the window (a long session's syncs add up)."""
    criteo.configure(calls_per_minute=2, rate_window_seconds=30)
    headers = {"Authorization": f"Bearer {_token(criteo)}", "Content-Type": "application/json"}
    body = {"data": {"type": "AddRemoveContactlist", "attributes": {"operation": "add", "identifiers": ["ab" * 32]}}}

    def amend(name: str) -> requests.Response:
        sid = criteo.add_segment(name)["id"]
        url = f"{criteo.base_url}/2026-07/retail-media/audience-segments/{sid}/contact-list/add-remove"
        return requests.post(url, json=body, headers=headers, timeout=10)

    assert [amend(name).status_code for name in ("first", "second")] == [200, 200]
    refused = amend("third")
    assert refused.status_code == 429 and refused.headers["x-ratelimit-remaining"] == "0"
    criteo.configure(calls_per_minute=0)
    assert amend("fourth").status_code == 200


def test_deprecated_version_answers_with_sunset_headers_and_unknown_versions_404(criteo):
    headers = {"Authorization": f"Bearer {_token(criteo)}"}
    old = requests.get(f"{criteo.base_url}/2026-01/retail-media/me", headers=headers, timeout=10)
    assert old.status_code == 200 and old.headers["Deprecation"] == "true" and "2027" in old.headers["Sunset"]
    current = requests.get(f"{criteo.base_url}/2026-07/retail-media/me", headers=headers, timeout=10)
    assert "Deprecation" not in current.headers
    assert requests.get(f"{criteo.base_url}/2019-01/retail-media/me", headers=headers, timeout=10).status_code == 404


def test_tokens_expire_on_the_fakes_clock(criteo):
    headers = {"Authorization": f"Bearer {_token(criteo)}"}
    url = f"{criteo.base_url}/2026-07/retail-media/me"
    assert requests.get(url, headers=headers, timeout=10).status_code == 200
    criteo.advance_time(900)
    expired = requests.get(url, headers=headers, timeout=10)
    assert expired.status_code == 401
    assert expired.json()["errors"][0]["code"] == "authorization-token-expired"


def test_statistics_follow_the_computation_windows_of_the_fakes_clock(criteo):
    from datetime import UTC, datetime

    criteo.configure(stats_after_window=1)  # the fake's default (the test fixture turns it off)
    headers = {"Authorization": f"Bearer {_token(criteo)}"}
    sid = criteo.add_segment("clocked")["id"]
    body = {"data": {"attributes": {"operation": "add", "identifierType": "Email", "identifiers": ["a" * 64]}}}
    url = f"{criteo.base_url}/2026-07/retail-media/audience-segments/{sid}/contact-list/add-remove"
    assert requests.post(url, json=body, headers=headers, timeout=10).status_code == 200
    stats_url = f"{criteo.base_url}/2026-07/retail-media/accounts/424242/audience-segments/{sid}/contact-list"

    def count() -> int:
        return requests.get(stats_url, headers=headers, timeout=10).json()["data"]["attributes"]["numberOfIdentifiers"]

    assert count() == 0  # not computed yet
    now = datetime.fromtimestamp(criteo.now(), UTC)
    to_next_window = (12 - now.hour % 12) * 3600 - now.minute * 60 - now.second + 1
    criteo.advance_time(to_next_window - 120)
    headers["Authorization"] = f"Bearer {_token(criteo)}"
    assert count() == 0  # two minutes before the window
    criteo.advance_time(120)
    assert count() == 1


_HEX = "0123456789abcdef"
_identifier = st.one_of(
    st.text(alphabet=_HEX, min_size=63, max_size=65),
    st.text(alphabet=_HEX + "ABCDEF@ .\n+é", min_size=0, max_size=66),
    st.sampled_from(["a" * 64, "A" * 64, "0" * 64 + "\n", "é" * 64, "x@y", " ", "+79161234567"]),
    st.integers(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.lists(_identifier, max_size=8), st.lists(st.text(alphabet=_HEX, min_size=64, max_size=64))),
    st.sampled_from(["Email", "PhoneNumber", "CustomerId", "email", "madid"]),
)
def test_whole_list_validation_accepts_exactly_what_the_per_value_check_accepts(identifiers, id_type):
    expected = [v for v in identifiers if CriteoFake._valid_identifier(v, id_type)]
    assert CriteoFake._valid_identifiers(identifiers, id_type) == expected


_digest = st.text(alphabet=_HEX, min_size=64, max_size=64)
_near_digest = st.one_of(_digest, st.text(alphabet=_HEX + 'ABCDEF", \\]\x00', min_size=62, max_size=66))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12), st.sampled_from(["\x00identifiers"]))


@st.composite
def _amendment_bodies(draw: st.DrawFn) -> bytes:
    """Bodies of an add/remove call as clients write them, and texts close to that layout."""
    import json

    digests = draw(st.lists(_digest, max_size=6))
    array = '["' + '", "'.join(digests) + '"]' if digests else "[]"
    if draw(st.booleans()):  # a string that is not a digest, or a stray character, in the array
        items = draw(st.lists(_near_digest, min_size=1, max_size=4))
        array = "[" + ", ".join(json.dumps(v) if draw(st.booleans()) else f'"{v}"' for v in items) + "]"
    if digests and draw(st.booleans()):  # one character of the array's text changed or moved
        i = draw(st.integers(1, len(array) - 2))
        j = draw(st.integers(1, len(array) - 2))
        chars = list(array)
        if draw(st.booleans()):
            chars[i] = draw(st.sampled_from('"," A]\\\x00') | st.sampled_from(_HEX))
        else:
            chars.insert(j, chars.pop(i))
        array = "".join(chars)
    extra = draw(st.dictionaries(st.sampled_from(["identifierType", "x", "identifiers", "operation"]), _scalar))
    head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in extra.items())
    attributes = draw(
        st.sampled_from(
            [
                '{"operation": "add", "identifiers": ARRAY}',
                '{"identifiers": ARRAY, "operation": "remove", "identifierType": "Email"}',
                "{HEAD, " + '"identifiers": ARRAY}',
                '{"identifiers": ARRAY, ' + "HEAD}",
                '{"identifiers": ARRAY, "identifiers": ARRAY}',
                '{"identifiers": ARRAY, "identifiers": "\\u0000identifiers"}',
                '{"identifiers": ARRAY',
                '{"identifiers": ARRAY}}',
                '{"note": "\\"identifiers\\": [", "identifiers": ARRAY}',
                '{"nested": {"identifiers": ARRAY}}',
            ]
        )
    )
    attributes = attributes.replace("HEAD", head or '"a": 1').replace("ARRAY", array)
    body = draw(
        st.sampled_from(
            [
                '{"data": {"type": "AddRemoveContactlist", "attributes": ATTR}}',
                '{"data": {"attributes": ATTR, "type": "ContactlistAmendment"}}',
                '{"data": ATTR}',
                '[{"data": {"attributes": ATTR}}]',
                '{"data": {"attributes": ATTR}, "data": {"attributes": {"identifiers": []}}}',
            ]
        )
    )
    text = body.replace("ATTR", attributes)
    return text.encode("utf-8")


@settings(max_examples=500, deadline=None)
@given(_amendment_bodies())
def test_digest_body_split_is_the_json_parse_or_declines(raw):
    """The fake's split of digest arrays gives what ``json.loads`` gives, or leaves the body to it."""
    import json

    from airflow_audience_provider.sandbox.criteo import split_digest_body

    split = split_digest_body(raw)
    if split is None:
        return
    body, digests = split
    assert body["data"]["attributes"]["identifiers"] is digests
    body["data"]["attributes"]["identifiers"] = list(digests)
    assert body == json.loads(raw)
    assert len(digests) == len(list(digests)) and all(len(d) == 64 and not d.strip(_HEX) for d in digests)


def test_digest_body_split_takes_what_hashing_clients_send():
    import hashlib

    from airflow_audience_provider.core.transport import JsonStrings, encode_json
    from airflow_audience_provider.sandbox.criteo import split_digest_body

    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    lines = "".join(d + "\n" for d in digests).encode()
    for identifiers in (digests, JsonStrings(lines, len(digests))):
        attributes = {"operation": "add", "identifierType": "Email", "identifiers": identifiers}
        raw = encode_json({"data": {"type": "AddRemoveContactlist", "attributes": attributes}})
        split = split_digest_body(raw)
        assert split is not None and list(split[1]) == digests and len(split[1]) == 1000


def test_amendments_of_digests_are_validated_as_before(criteo):
    """Digest bodies take the fake's fast path; what it refuses or counts stays the same."""
    headers = {"Authorization": f"Bearer {_token(criteo)}", "Content-Type": "application/json"}
    sid = criteo.add_segment("digests")["id"]
    url = f"{criteo.base_url}/2026-07/retail-media/audience-segments/{sid}/contact-list/add-remove"
    digests = ["ab" * 32, "cd" * 32, "ef" * 32]
    array = '["' + '", "'.join(digests) + '"]'

    def post(attributes: str) -> requests.Response:
        body = '{"data": {"type": "AddRemoveContactlist", "attributes": ' + attributes + "}}"
        return requests.post(url, data=body.encode(), headers=headers, timeout=10)

    ok = post('{"operation": "add", "identifierType": "Email", "identifiers": ' + array + "}")
    assert ok.status_code == 200 and ok.json()["data"]["nbValidIdentifiers"] == 3
    assert ok.json()["data"]["nbInvalidIdentifiers"] == 0
    assert criteo.members(sid) == set(digests)
    removed = post('{"operation": "remove", "identifierType": "Email", "identifiers": ' + array[:67] + "]}")
    assert removed.status_code == 200 and criteo.members(sid) == set(digests[1:])
    truncated = post('{"operation": "add", "identifierType": "Email", "identifiers": ' + array)
    assert truncated.status_code == 400 and truncated.json()["errors"][0]["code"] == "invalid-json"
    bad_op = post('{"operation": "upsert", "identifierType": "Email", "identifiers": ' + array + "}")
    assert bad_op.status_code == 400 and bad_op.json()["errors"][0]["code"] == "validation-error"
    bad_type = post('{"operation": "add", "identifierType": "Phone", "identifiers": ' + array + "}")
    assert bad_type.status_code == 400
    overridden = post('{"operation": "add", "identifierType": "Email", "identifiers": ' + array + ', "identifiers": 1}')
    assert overridden.status_code == 400 and "array" in overridden.json()["errors"][0]["detail"]
    mixed = post('{"operation": "add", "identifierType": "Email", "identifiers": ["' + "AB" * 32 + '", "x"]}')
    assert mixed.status_code == 200 and mixed.json()["data"]["nbInvalidIdentifiers"] == 2
    criteo.configure(max_identifiers=2)
    too_many = post('{"operation": "add", "identifierType": "Email", "identifiers": ' + array + "}")
    assert too_many.status_code == 400 and too_many.json()["errors"][0]["code"] == "too-many-identifiers"
    assert criteo.members(sid) == set(digests[1:])


def test_digest_body_split_declines_every_one_character_change_of_the_array():
    """Each byte of a two-digest array replaced, dropped, or moved a few places: a parse or a decline."""
    import json

    from airflow_audience_provider.sandbox.criteo import split_digest_body

    array = '["' + "0123456789abcdef" * 4 + '", "' + "fedcba9876543210" * 4 + '"]'
    variants = set()
    for i in range(1, len(array) - 1):
        for c in '"," A]\\\x00g':
            variants.add(array[:i] + c + array[i + 1 :])
        variants.add(array[:i] + array[i + 1 :])
        for j in range(max(1, i - 3), min(len(array) - 1, i + 4)):
            chars = list(array)
            chars.insert(j, chars.pop(i))
            variants.add("".join(chars))
    split_some = 0
    for variant in variants:
        raw = ('{"data": {"attributes": {"operation": "add", "identifiers": ' + variant + "}}}").encode()
        split = split_digest_body(raw)
        if split is None:
            continue
        split_some += 1
        body, digests = split
        body["data"]["attributes"]["identifiers"] = list(digests)
        assert body == json.loads(raw), variant
    assert split_some > 100  # hex digits replaced by hex digits still take the fast path


def test_statistics_kept_count_equals_a_recount_after_random_adds_removes_and_clears(criteo):
    """The fake keeps each list's members between requests; its answers equal a replay from the first operation."""
    import hashlib
    import random
    from datetime import UTC, datetime

    criteo.configure(calls_per_minute=0)
    token = _token(criteo)
    headers = {"Authorization": f"Bearer {token}"}
    sid = criteo.add_segment("churning")["id"]
    base = f"{criteo.base_url}/2026-07/retail-media"
    stats_url = f"{base}/accounts/424242/audience-segments/{sid}/contact-list"
    pool = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(40)]
    rng = random.Random(20261208)
    model: set[str] = set()  # the list now
    computed: set[str] = set()  # the list as of the last computation window

    def count() -> int:
        answer = requests.get(stats_url, headers=headers, timeout=10)
        return answer.json()["data"]["attributes"]["numberOfIdentifiers"]

    for step in range(80):
        choice = rng.random()
        if choice < 0.08:
            reply = requests.post(f"{base}/audience-segments/{sid}/contact-list/clear", headers=headers, timeout=10)
            assert reply.status_code == 204
            model.clear()
        else:
            operation = "add" if choice < 0.6 else "remove"
            ids = rng.sample(pool, rng.randint(1, 12))
            body = {"data": {"attributes": {"operation": operation, "identifierType": "Email", "identifiers": ids}}}
            reply = requests.post(f"{base}/audience-segments/{sid}/contact-list/add-remove", json=body,
                                  headers=headers, timeout=10)  # fmt: skip
            assert reply.status_code == 200
            (model.update if operation == "add" else model.difference_update)(ids)
        if step % 20 == 10:  # statistics as of the computation window: the next window takes the list now
            criteo.configure(stats_after_window=1)
            assert count() == len(computed)  # the operations since the last window are not shown yet
            now = datetime.fromtimestamp(criteo.now(), UTC)
            criteo.advance_time((12 - now.hour % 12) * 3600 - now.minute * 60 - now.second + 1)
            headers["Authorization"] = f"Bearer {_token(criteo)}"
            computed = set(model)
            assert count() == len(computed)
            criteo.configure(stats_after_window=0)
        assert count() == len(model) == criteo.recount(sid)
        assert criteo.members(sid) == model
