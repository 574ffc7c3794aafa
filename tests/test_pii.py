"""Redaction: what must go, what must stay, and that nothing can make it raise."""

from __future__ import annotations

import base64
import datetime
import json
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains

from asgi_observe import pii
from asgi_observe.pii import PII_PATTERNS, PIIRedactor, is_sensitive_key, luhn_valid, redact


@pytest.fixture(params=["fast path", "all patterns"])
def patterns_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test with the default list (pre-checked) and with an edited one (no pre-check)."""
    saved = list(PII_PATTERNS)
    if request.param == "all patterns":
        PII_PATTERNS.append((re.compile(r"\bnever-matches-anything-\d{40}\b"), "[X]"))
    try:
        yield request.param
    finally:
        PII_PATTERNS[:] = saved


REDACTED_CASES = [
    ("contact john.doe+tag@example.co.uk today", "contact [REDACTED_EMAIL] today"),
    ("ALICE@EXAMPLE.COM", "[REDACTED_EMAIL]"),
    ("q=john%40example.com&x=1", "q=[REDACTED_EMAIL]&x=1"),
    ("card 4111 1111 1111 1111.", "card [REDACTED_CC]."),
    ("card=4111-1111-1111-1111", "card=[REDACTED_CC]"),
    ("amex 378282246310005", "amex [REDACTED_CC]"),
    ("mc 5555555555554444,", "mc [REDACTED_CC],"),
    ("ssn 123-45-6789", "ssn [REDACTED_SSN]"),
    ("phone +1 (555) 123-4567", "phone [REDACTED_PHONE]"),
    ("phone 555-123-4567", "phone [REDACTED_PHONE]"),
    ("phone (555) 123-4567", "phone [REDACTED_PHONE]"),
    ("wa +6281234567890", "wa [REDACTED_PHONE]"),
    ("hp 0812-3456-7890", "hp [REDACTED_PHONE]"),
    ("uk +44 20 7946 0958", "uk [REDACTED_PHONE]"),
    ("fr +33 1 23 45 67 89", "fr [REDACTED_PHONE]"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        "jwt [REDACTED_JWT]",
    ),
    ("Authorization: Bearer abcdef123456", "Authorization: Bearer [REDACTED]"),
    ("postgresql://app:hunter2@db:5432/app", "postgresql://[REDACTED]@db:5432/app"),
    ("login with password=hunter2 now", "login with password=[REDACTED] now"),
    ("{'api_key': 'abc123'}", "{'api_key': '[REDACTED]'}"),
    # internationalised addresses and domains
    ("from josé@example.com today", "from [REDACTED_EMAIL] today"),
    ("to bob@münchen.de", "to [REDACTED_EMAIL]"),
    ("ünïcødé.ñame@例え.jp", "[REDACTED_EMAIL]"),
    # numbers joined to a word by "_" or "-", before or after
    ("card_4111111111111111", "card_[REDACTED_CC]"),
    ("ssn_123-45-6789", "ssn_[REDACTED_SSN]"),
    ("phone-+14155552671", "phone-[REDACTED_PHONE]"),
    ("user_card_4111 1111 1111 1111 declined", "user_card_[REDACTED_CC] declined"),
    ("4111111111111111_visa", "[REDACTED_CC]_visa"),
    ("tel-(555) 123-4567", "tel-[REDACTED_PHONE]"),
    # cookies in free text: the whole value
    ("Cookie: sid=abc123; theme=dark", "Cookie: [REDACTED]"),
    ("Set-Cookie: sid=abc123; Path=/; HttpOnly\nHost: x", "Set-Cookie: [REDACTED]\nHost: x"),
    ("{'cookie': 'sid=abc123', 'n': 1}", "{'cookie': '[REDACTED]', 'n': 1}"),
    ('headers="set-cookie: a=b" next=1', 'headers="set-cookie: [REDACTED]" next=1'),
    # bracketed form names
    ("user[password]=hunter2&page=2", "user[password]=[REDACTED]&page=2"),
    ("password[]=hunter2", "password[]=[REDACTED]"),
    ("a[b][api_key]=k1", "a[b][api_key]=[REDACTED]"),
]

KEPT = [
    "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "uuid 550e8400-e29b-41d4-a716-446655440000",
    "uuid 12345678-1234-1234-1234-123456789012 and 42345678-1234-1234-1234-123456789012",
    "ulid 01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "at 2024-01-15T12:30:45.123456Z and 2024-01-15 12:30:45+05:30",
    "from 192.168.100.200 and 10.0.0.1:8080",
    "version 1.2.3, v2.10.4-rc1, python 3.11.7",
    "GET /items/42/reviews/7 took 12.5 ms (1234.567ms)",
    "epoch 1700000000 ms 1700000000000 ns 1700000000000000000",
    "deltas +10.25 -3.5 12.75",
    "on 01-15-2024 at 12:30",
    "tokens_used=1200 max_tokens=4096",
    "a 32-hex id 3f1c2a9e8b7d4c6a9e0f1a2b3c4d5e6f",
    "card-like but not Luhn 4111 1111 1111 1112",
    "@app.route decorator in a traceback",
    "2024-01-01 2024-12-31",
    "from 2024-01-01T12:00:00.123456+00:00 to 2024-12-31T23:59:59+05:30",
    "order ORD-2024-000123 shipped",
    "request 3f1c2a9e-8b7d-4c6a-9e0f-1a2b3c4d5e6f",
    "ids 550e8400-e29b-41d4-a716-446655440000 abcdefab-cdef-4bcd-abcd-012345678901",
    "sku-2024-0001 build-20240101 pid-4242 port-8080",
    "a cookie jar without a colon, cookies=3",
    "a password_hint=shown and tokens_used=3",
]


@pytest.mark.parametrize(("text", "expected"), REDACTED_CASES)
def test_redacts_personal_data_and_secrets(text: str, expected: str, patterns_mode: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_keeps_operational_values(text: str, patterns_mode: str) -> None:
    assert redact(text) == text


def test_unchanged_text_is_returned_as_is() -> None:
    text = "nothing to see here " + "x" * 10
    assert redact(text) is text


@pytest.mark.parametrize(
    "key",
    [
        "authorization",
        "Authorization",
        "proxy-authorization",
        "cookie",
        "Set-Cookie",
        "PASSWORD",
        "db_password",
        "client_secret",
        "token",
        "access_token",
        "x-csrf-token",
        "api_key",
        "apikey",
        "X-API-Key",
        "apiKey",
        "session",
        "sessionId",
        "session-id",
        "http.request.header.authorization",
    ],
)
def test_sensitive_keys_are_redacted_whatever_the_value(key: str) -> None:
    assert is_sensitive_key(key)
    for value in ("plain", 42, None, {"nested": "x"}, ["a"]):
        assert redact({key: value}) == {key: "[REDACTED]"}


@pytest.mark.parametrize(
    "key",
    ["tokens_used", "token_type", "session_count", "user_agent", "request_id", "trace_id", "key"],
)
def test_ordinary_keys_are_not_sensitive(key: str) -> None:
    assert not is_sensitive_key(key)
    assert redact({key: "value"}) == {key: "value"}


def test_containers_are_redacted_recursively_and_keep_their_types() -> None:
    value = {
        "user": {"email": "a@example.com", "headers": {"Cookie": "sid=1"}},
        "list": ["b@example.com", ("c@example.com", 1)],
        "count": 3,
        "ok": True,
        "none": None,
    }
    assert redact(value) == {
        "user": {"email": "[REDACTED_EMAIL]", "headers": {"Cookie": "[REDACTED]"}},
        "list": ["[REDACTED_EMAIL]", ("[REDACTED_EMAIL]", 1)],
        "count": 3,
        "ok": True,
        "none": None,
    }


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


class _Talkative:
    def __str__(self) -> str:
        return "I am bob@example.com"


def test_awkward_values_never_raise_and_become_json_safe() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    value = {
        "bytes": b"mail a@example.com \xff\x00",
        "when": datetime.datetime(2024, 1, 15, 12, 30, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 1, 15),
        "money": Decimal("12.50"),
        "id": uuid.UUID("550e8400-e29b-41d4-a716-446655440000"),
        "obj": _Talkative(),
        "bad": _Unprintable(),
        "nan": float("nan"),
        "inf": float("inf"),
        "set": {1},
        "exc": ValueError("user c@example.com not found"),
        (1, 2): "tuple key",
        "cyclic": cyclic,
    }
    result = redact(value)
    json.dumps(result, allow_nan=False)  # must not raise
    assert result["bytes"] == "mail [REDACTED_EMAIL] \\xff\x00"
    assert result["when"] == "2024-01-15T12:30:00+00:00"
    assert result["day"] == "2024-01-15"
    assert result["money"] == "12.50"
    assert result["id"] == "550e8400-e29b-41d4-a716-446655440000"
    assert result["obj"] == "I am [REDACTED_EMAIL]"
    assert result["bad"] == "<unprintable _Unprintable>"
    assert (result["nan"], result["inf"]) == ("nan", "inf")
    assert result["set"] == [1]
    assert result["exc"] == "ValueError: user [REDACTED_EMAIL] not found"
    assert result["(1, 2)"] == "tuple key"
    assert "[MAX_DEPTH]" in json.dumps(result)


def test_pii_patterns_is_editable() -> None:
    saved = list(PII_PATTERNS)
    try:
        PII_PATTERNS.append((re.compile(r"\bEMP-\d{6}\b"), "[REDACTED_EMPLOYEE]"))
        assert redact("employee EMP-123456 mailed a@example.com") == (
            "employee [REDACTED_EMPLOYEE] mailed [REDACTED_EMAIL]"
        )
    finally:
        PII_PATTERNS[:] = saved
    assert redact("employee EMP-123456") == "employee EMP-123456"


@pytest.mark.parametrize(
    ("number", "valid"),
    [("4111111111111111", True), ("4111111111111112", False), ("378282246310005", True)],
)
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


def test_processor_redacts_event_values_and_exception_text() -> None:
    redactor = PIIRedactor()
    event = {
        "event": "login failed for a@example.com",
        "password": "hunter2",
        "exception": "Traceback ...\nValueError: card 4111 1111 1111 1111",
        "attempts": 3,
        "ratio": float("nan"),
        "_record": object(),
    }
    record = event["_record"]
    out = redactor(None, "info", event)
    assert out["event"] == "login failed for [REDACTED_EMAIL]"
    assert out["password"] == "[REDACTED]"
    assert out["exception"].endswith("ValueError: card [REDACTED_CC]")
    assert out["attempts"] == 3
    assert out["ratio"] == "nan"
    assert out["_record"] is record  # ProcessorFormatter's own key is left alone


def test_processor_with_custom_sensitive_keys() -> None:
    redactor = PIIRedactor(sensitive_keys=["customer-number"])
    out = redactor(None, "info", {"customer_number": "C-1", "password": "x", "event": "e"})
    assert out == {"customer_number": "[REDACTED]", "password": "x", "event": "e"}


def test_long_hostile_inputs_stay_fast() -> None:
    # Shapes that make naive patterns backtrack quadratically; each must finish quickly.
    hostile = [
        "a" * 20_000 + "@",
        "+1" + "2" * 20_000,
        ("1 " * 10_000),
        "eyJ" + "a" * 20_000 + ".",
        "x." * 10_000 + "@example",
    ]
    for text in hostile:
        assert isinstance(redact(text), str)


# --- properties -------------------------------------------------------------------------

SEPARATORS = st.sampled_from([" ", "\n", "\t", ",", ";", "(", ")", "[", "]", "<", ">", "|", '"'])
NOISE = st.text(max_size=40)
SAFE_NOISE = st.text(
    alphabet=st.characters(exclude_characters="=:@'\"%", codec="utf-8"),
    max_size=40,
)


def _embed(prefix: str, sep1: str, value: str, sep2: str, suffix: str) -> str:
    return f"{prefix}{sep1}{value}{sep2}{suffix}"


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,30}", fullmatch=True))
    domain = draw(domains())
    return f"{local}@{domain}"


@st.composite
def cards(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    body = str(draw(st.integers(2, 6))) + "".join(
        str(d) for d in draw(st.lists(st.integers(0, 9), min_size=length - 2, max_size=length - 2))
    )
    check = next(str(d) for d in range(10) if luhn_valid(body + str(d)))
    digits = body + check
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def jwts(draw: st.DrawFn) -> str:
    header = {"alg": draw(st.sampled_from(["HS256", "RS256", "ES256"])), "typ": "JWT"}
    claims = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.one_of(st.integers(), st.text(max_size=20)),
            max_size=4,
        )
    )
    claims["sub"] = draw(st.text(max_size=12))
    signature = draw(st.binary(min_size=0, max_size=64))
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)]
    )


@settings(max_examples=150, deadline=None)
@given(st.one_of(emails(), cards(), jwts()), NOISE, SEPARATORS, SEPARATORS, NOISE)
def test_generated_pii_never_survives(
    secret: str, prefix: str, sep1: str, sep2: str, suffix: str
) -> None:
    text = _embed(prefix, sep1, secret, sep2, suffix)
    assert secret not in redact(text)
    assert secret not in json.dumps(redact({"event": text, "nested": [text]}))


def _timestamps() -> st.SearchStrategy[str]:
    return st.datetimes(
        min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda moment: moment.isoformat() + "Z")


OPERATIONAL = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),
    st.binary(min_size=16, max_size=16).map(bytes.hex),  # trace ids, nginx $request_id
    st.binary(min_size=8, max_size=8).map(bytes.hex),  # span ids
    _timestamps(),
    st.ip_addresses(v=4).map(str),
    st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 999)).map(
        lambda v: "v{}.{}.{}".format(*v)
    ),
)


@settings(max_examples=200, deadline=None)
@given(OPERATIONAL, SAFE_NOISE, SEPARATORS, SEPARATORS, SAFE_NOISE)
def test_generated_operational_ids_always_survive(
    value: str, prefix: str, sep1: str, sep2: str, suffix: str
) -> None:
    assume(not prefix.lower().rstrip().endswith(("bearer", "basic")))
    text = _embed(prefix, sep1, value, sep2, suffix)
    assert value in redact(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_handled_and_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
    assert pii.redact_text(text) == once


def test_non_finite_float_subclasses_become_strings() -> None:
    class Ratio(float):
        pass

    cleaned = redact({"ratio": Ratio("nan"), "limit": Ratio("inf"), "ok": Ratio(0.5)})
    assert cleaned == {"ratio": "nan", "limit": "inf", "ok": 0.5}


# --- Query strings: the one redaction behind the access log and url.query ---


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # OpenTelemetry's semantic-convention list, in any case
        (
            "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Signature=vjbyPxybd&Expires=1",
            "AWSAccessKeyId=[REDACTED]&Signature=[REDACTED]&Expires=1",
        ),
        ("sig=abcdef&X-Goog-Signature=ab12&x_goog_signature=cd", None),
        # OAuth codes, API keys, signed-URL parts
        ("code=4/0AX4XfWj&state=s1", "code=[REDACTED]&state=s1"),
        ("key=k1&X-Amz-Credential=c&X-Amz-Security-Token=t", None),
        # the sensitive-key rule, also through percent-encoding
        ("access_token=abc&page=2", "access_token=[REDACTED]&page=2"),
        ("session%5Fid=abc", "session%5Fid=[REDACTED]"),
        # personal data in names and values, percent-encoded or not
        ("email=bob%40example.com&n=1", "email=[REDACTED_EMAIL]&n=1"),
        ("q=bob@example.com", "q=[REDACTED_EMAIL]"),
        ("bob%40example.com", "[REDACTED_EMAIL]"),
        ("tel=%2B62+812-3456-7890", "tel=[REDACTED_PHONE]"),
        # a secret assignment only the whole pair shows
        ("pwd=hunter2", "pwd=[REDACTED]"),
        # nothing to redact: exactly as sent
        ("q=caf%C3%A9&n=1&flag&x=&a=%ZZ", "q=caf%C3%A9&n=1&flag&x=&a=%ZZ"),
    ],
)
def test_redact_query(query: str, expected: str | None) -> None:
    redacted = pii.redact_query(query)
    if expected is None:  # every value is a secret
        expected = "&".join(f"{pair.partition('=')[0]}=[REDACTED]" for pair in query.split("&"))
    assert redacted == expected
    assert pii.redact_query(redacted) == redacted


def test_redact_query_takes_its_own_sensitive_params() -> None:
    assert pii.redact_query("tenant=acme&code=c&token=t", sensitive_params=["Tenant"]) == (
        "tenant=[REDACTED]&code=c&token=[REDACTED]"
    )
    assert pii.redact_query("a=1&b=2", sensitive_params=("b",)) == "a=1&b=[REDACTED]"
    assert {"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"} <= set(
        pii.DEFAULT_SENSITIVE_QUERY_PARAMS
    )


def test_redact_query_is_bounded() -> None:
    many = pii.redact_query("&".join(["k=v"] * 500))
    assert many == "&".join(["k=v"] * pii.MAX_QUERY_PARAMS + ["..."])
    assert len(pii.redact_query("x=" + "a" * 100_000)) == pii.MAX_QUERY_LENGTH


def test_a_card_beside_another_digit_group_is_still_found() -> None:
    # The whole run fails the Luhn check; the card inside it does not.
    assert redact("paid 2000000000008 0") == "paid [REDACTED_CC] 0"
    assert redact("ref 3 4111 1111 1111 1111") == "ref 3 [REDACTED_CC]"
    assert redact("order 4111-1111-1111-1112") == "order 4111-1111-1111-1112"


def test_bracketed_query_names_follow_the_sensitive_rule() -> None:
    query = "user[password]=p1&password[]=p2&x%5Btoken%5D=p3&sig[]=p4&user[name]=ann&tags[]=a"
    assert pii.redact_query(query) == (
        "user[password]=[REDACTED]&password[]=[REDACTED]&x%5Btoken%5D=[REDACTED]"
        "&sig[]=[REDACTED]&user[name]=ann&tags[]=a"
    )


# --- Keys, pairs and bounds -------------------------------------------------------------


def test_personal_data_in_keys_is_redacted_without_losing_values() -> None:
    assert redact({"alice@example.com": 3}) == {"[REDACTED_EMAIL]": 3}
    assert redact({"a@example.com": 1, "b@example.com": 2, "n": {b"c@example.com": 3}}) == {
        "[REDACTED_EMAIL]": 1,
        "[REDACTED_EMAIL]#2": 2,
        "n": {"[REDACTED_EMAIL]": 3},
    }
    assert redact({b"authorization": b"Bearer abcdef123456"}) == {"authorization": "[REDACTED]"}


def _starlette_headers() -> list[tuple[str, str]]:
    from starlette.requests import Request

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "query_string": b"",
        "headers": [
            (b"authorization", b"Bearer x"),
            (b"cookie", b"sid=s3cr3t"),
            (b"x-api-key", b"k3y"),
            (b"accept", b"*/*"),
        ],
    }
    return Request(scope).headers.items()


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (
            [(b"authorization", b"Bearer x"), (b"host", b"example.org")],
            [("authorization", "[REDACTED]"), ("host", "example.org")],
        ),
        ([("authorization", "x")], [("authorization", "[REDACTED]")]),
        ([["Cookie", "sid=1"], ["n", "1"]], [["Cookie", "[REDACTED]"], ["n", "1"]]),
        (("password", "hunter2"), ("password", "[REDACTED]")),
        ({"a": 1}.items(), [("a", 1)]),
        ({"token": "t"}.items(), [("token", "[REDACTED]")]),
        # not a pair of a sensitive name: left alone
        ([("accept", "x"), ("a", "b", "c")], [("accept", "x"), ("a", "b", "c")]),
        (["password", "token", "user"], ["password", "token", "user"]),
    ],
)
def test_name_value_pairs_follow_the_sensitive_key_rule(pairs: Any, expected: Any) -> None:
    assert redact(pairs) == expected


def test_request_headers_items_are_safe_to_log() -> None:
    assert redact(_starlette_headers()) == [
        ("authorization", "[REDACTED]"),
        ("cookie", "[REDACTED]"),
        ("x-api-key", "[REDACTED]"),
        ("accept", "*/*"),
    ]


def test_pairs_logged_as_event_values_are_redacted() -> None:
    out = PIIRedactor()(
        None,
        "info",
        {
            "event": "request",
            "headers": _starlette_headers(),
            "raw": [(b"authorization", b"Bearer x"), (b"cookie", b"a=b")],
            "one": ("authorization", "Bearer abc"),
        },
    )
    text = json.dumps(out)
    for secret in ("Bearer", "s3cr3t", "k3y", "a=b"):
        assert secret not in text
    assert out["raw"] == [("authorization", "[REDACTED]"), ("cookie", "[REDACTED]")]


def test_redact_is_bounded_in_size() -> None:
    many = list(range(pii.MAX_ITEMS + 500))
    cleaned = redact(many)
    assert len(cleaned) == pii.MAX_ITEMS + 1
    assert cleaned[-1] == f"{pii.TRUNCATED} 500 more items"
    assert redact(tuple(many))[: pii.MAX_ITEMS] == list(range(pii.MAX_ITEMS))
    assert len(redact(set(many))) == pii.MAX_ITEMS + 1
    mapping = {f"k{i}": i for i in range(pii.MAX_ITEMS + 7)}
    cleaned_mapping = redact(mapping)
    assert len(cleaned_mapping) == pii.MAX_ITEMS + 1
    assert cleaned_mapping[pii.TRUNCATED] == "7 more items"
    assert redact(list(range(10))) == list(range(10))  # small containers are untouched


# --- Properties in both directions: word-joined PII goes, operational values stay -----

JOIN_WORDS = st.lists(
    st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True), min_size=1, max_size=4
).flatmap(lambda words: st.sampled_from(["_", "-"]).map(lambda sep: sep.join(words) + sep))


@st.composite
def ssns(draw: st.DrawFn) -> str:
    area = draw(st.integers(1, 899).filter(lambda n: n != 666))
    group = draw(st.integers(1, 99))
    serial = draw(st.integers(1, 9999))
    return f"{area:03d}-{group:02d}-{serial:04d}"


@st.composite
def phones(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(["1", "44", "62", "33", "49"]))
    number = draw(st.from_regex(r"[2-9][0-9]{8,10}", fullmatch=True))
    return "+" + country + number


@settings(max_examples=200, deadline=None)
@given(st.one_of(cards(), ssns(), phones(), emails()), JOIN_WORDS, SEPARATORS, NOISE)
def test_generated_pii_joined_to_words_never_survives(
    secret: str, word: str, sep: str, suffix: str
) -> None:
    text = f"{word}{secret}{sep}{suffix}"
    redacted = redact(text)
    assert secret not in redacted
    if "@" not in secret:  # an e-mail's local part takes the word in: both go
        assert redacted.startswith(word)


def _dates() -> st.SearchStrategy[str]:
    return st.dates(min_value=datetime.date(1970, 1, 1), max_value=datetime.date(2100, 1, 1)).map(
        datetime.date.isoformat
    )


def _aware_timestamps() -> st.SearchStrategy[str]:
    offsets = st.integers(-14 * 60, 14 * 60).map(
        lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
    )
    return st.builds(
        lambda moment, zone: moment.replace(tzinfo=zone).isoformat(),
        st.datetimes(
            min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 1, 1)
        ),
        offsets,
    )


RANGE_JOINERS = st.sampled_from([" ", " to ", "/", "..", " - ", ", "])
KEPT_VALUES = st.one_of(
    OPERATIONAL,
    _aware_timestamps(),
    st.tuples(_dates(), RANGE_JOINERS, _dates()).map("".join),
    st.tuples(_timestamps(), RANGE_JOINERS, _aware_timestamps()).map("".join),
    st.integers(0, 999_999).map(lambda n: f"ORD-2024-{n:06d}"),
)


@settings(max_examples=300, deadline=None)
@given(KEPT_VALUES, SAFE_NOISE, SEPARATORS, SEPARATORS, SAFE_NOISE)
def test_generated_timestamps_uuids_and_date_ranges_always_survive(
    value: str, prefix: str, sep1: str, sep2: str, suffix: str
) -> None:
    assume(not prefix.lower().rstrip().endswith(("bearer", "basic")))
    text = _embed(prefix, sep1, value, sep2, suffix)
    assert value in redact(text)
