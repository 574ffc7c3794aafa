"""Redaction of personal data and secrets from everything the stack writes down.

This module owns the patterns (`PII_PATTERNS`), the sensitive-key rule, `redact()`, the
query redaction (`redact_query`, `redact_url_queries`) and the structlog processor
`PIIRedactor` that `configure_logging` puts in every chain, so application logs,
stdlib/uvicorn lines, access logs and exception text share one sanitizer. It is tuned
for the hot path: with the default patterns a string that cannot contain any of them
(no ``@``, no ``eyJ``, no run of seven digits and separators, no secret-looking keyword
or ``cookie`` header) is returned after a few substring checks, without running a
single substitution. Operational values -- trace and span ids, UUIDs, hex request ids,
ISO timestamps, dates and date ranges, IPv4 addresses, version strings, order numbers,
small numbers and durations -- are deliberately left alone: every number pattern is
anchored on non-word boundaries (or on a word of letters only joined by ``_``/``-``),
so digit runs inside hex ids or dotted addresses never match.
"""

from __future__ import annotations

import datetime
import itertools
import math
import re
from collections.abc import (
    Callable,
    Collection,
    ItemsView,
    Iterable,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from typing import Any, overload
from urllib.parse import quote, unquote_plus

from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "DEFAULT_SENSITIVE_QUERY_PARAMS",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_QUERY_LENGTH",
    "MAX_QUERY_PARAMS",
    "PII_PATTERNS",
    "REDACTED",
    "SENSITIVE_KEYS",
    "TRUNCATED",
    "PIIRedactor",
    "Replacement",
    "is_sensitive_key",
    "luhn_valid",
    "redact",
    "redact_path",
    "redact_plain_values",
    "redact_query",
    "redact_text",
    "redact_url_queries",
    "uses_default_patterns",
]

REDACTED = "[REDACTED]"
"""What the value of a sensitive key (``authorization``, ``password``, ...) becomes."""

MAX_DEPTH = 8
"""Containers nested deeper than this are cut (this also stops reference cycles)."""

MAX_ITEMS = 1000
"""`redact` keeps this many items of a list, tuple, set or mapping; the rest is counted."""

TRUNCATED = "[TRUNCATED]"
"""What marks the items `redact` left out of a container longer than `MAX_ITEMS`."""

SENSITIVE_KEYS: tuple[str, ...] = (
    "authorization",
    "cookie",
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "session",
    "sessionid",
    "session_id",
    "credentials",
    "private_key",
    "privatekey",
    "secret_key",
    "jwt",
)
"""Key endings whose values are always replaced by `REDACTED`.

A key is compared lower-cased with ``-`` turned into ``_`` and matches when it *ends* with
one of these, so ``Set-Cookie``, ``X-API-Key``, ``db_password``, ``access_token``,
``sessionId`` and ``http.request.header.authorization`` are caught while ``tokens_used``,
``token_type`` and ``session_count`` are not.
"""

DEFAULT_SENSITIVE_QUERY_PARAMS: tuple[str, ...] = (
    # OpenTelemetry's semantic conventions (url.query): signed-URL credentials
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    # OAuth authorization codes, API keys, and the other signed-URL parts
    "code",
    "key",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Credential",
)
"""Query parameters whose values `redact_query` replaces, on top of the sensitive-key
rule (which already covers ``token``, ``access_token``, ``api_key``, ``password``, ...).
Compared like keys: case-insensitively, with ``-`` and ``_`` equivalent."""

MAX_QUERY_LENGTH = 2048
"""`redact_query` looks at this many characters of a query at most (the rest is cut)."""

MAX_QUERY_PARAMS = 64
"""`redact_query` keeps this many parameters at most; more are replaced by ``...``."""

Replacement = str | Callable[["re.Match[str]"], str]
"""A replacement as `re.sub` accepts it: a template string or a function of the match."""

# All patterns are ASCII-only on purpose: `\d` must not match other scripts' digits and
# `\w` is then exactly [A-Za-z0-9_], which is what the boundaries below rely on.
_A = re.ASCII
# A number starts where no word character, dot, plus or dash precedes it, and ends where
# no word character or dash follows, nor a dot followed by a digit. This keeps digit runs
# inside UUIDs, hex ids, dotted IPv4 addresses and decimals out of every number pattern,
# while "call 555-123-4567." (a sentence-ending dot) still matches.
_NUM_START = r"(?<![\w.+\-])"
_NUM_END = r"(?![\w\-]|\.\d)"


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum of a string of ASCII digits; payment cards satisfy it."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _only_digits(text: str) -> str:
    return "".join(char for char in text if "0" <= char <= "9")


_URL_CREDENTIALS = re.compile(r"(://)[^\s/@:]+:[^\s/@]*@", _A)
# ``Cookie:``/``Set-Cookie:`` headers written out in free text (a header dump, a repr):
# the whole value goes, to the end of the line or of the quoted string it sits in.
_COOKIE_HEADER = re.compile(
    r"(?i)(?<![\w\-])((?:set[_\-])?cookie2?[\"']?\s*:\s*)"
    r"(?:(?P<quote>[\"'])(?:(?!(?P=quote))[^\r\n])*(?P=quote)?|[^\r\n\"]+)",
    _A,
)
_JWT = re.compile(r"eyJ[\w\-]+\.[\w\-]+\.[\w\-]*(?:\.[\w\-]*){0,2}", _A)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[\w.~+/\-]{6,}=*", _A)
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?<![\w\-])"
    # bracketed form names too: ``user[password]=``, ``password[]=``, ``a[b][token]=``
    r"((?:[\w\-]*[_\-\[])?(?:password|passwd|pwd|secret|token|api[_\-]?key)\]?(?:\[[\w\-]*\])*"
    r"[\"']?\s*[=:]\s*[\"']?)"
    r"(?!\[REDACTED)[^\s\"'&,;}]+",
    _A,
)
# Not ASCII-only: internationalised addresses (RFC 6531: ``josé@example.com``) and
# domains (IDNA: ``bob@münchen.de``) are personal data too. Underscores and digits are
# kept out of a domain's last label, which therefore starts with a letter of any script.
_EMAIL = re.compile(
    r"(?<![\w.!#$%*+^~\-])[\w.!#$%*+^~\-]{1,64}(?:@|%40)(?:[^\W_][\w\-]{0,62}\.)+[^\W\d_][\w\-]{0,62}"
    r"(?![\w\-])"
)
# A number ends where no letter or digit follows, nor a ``_``/``-`` that is not joining a
# word to it (``4111111111111111_visa`` is a card; ``555-123-45678`` is not a phone).
_NUM_END_JOINED = r"(?![^\W_]|[_\-](?![A-Za-z])|\.\d)"
_NUMBER_KINDS = (
    r"(?:"
    # payment cards: 13-19 digits, first 2-6 (the card networks; epoch-millisecond and
    # nanosecond timestamps start with 1), written as one run, in groups of four (the
    # last one shorter) or as 4-6-5/4-6-4, one separator throughout; Luhn-checked.
    # Groups of two (``2024-01-01 2024-12-31``) are dates, never cards.
    r"(?P<card>[2-6]\d{3}(?:\d{9,15}|(?P<sep>[ \-])"
    r"(?:\d{4}(?:(?P=sep)\d{4}){1,2}(?:(?P=sep)\d{1,4})?|\d{6}(?P=sep)\d{4,5})))"
    # US social security numbers, without the ranges the SSA never issues
    r"|(?P<ssn>(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4})"
    # international phones: +CC then separator-led groups (unambiguous: no backtracking
    # blow-up on long digit runs), or +CC and the number written without separators
    r"|(?P<intl>\+\d{1,3}(?:[ .\-]?\(\d{1,4}\)[ .\-]?\d{1,12}|[ .\-]\d{1,12}){1,6}|\+\d{8,15})"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567
    r"|(?P<nanp>(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4})"
    # national numbers with a trunk 0: 0812-3456-7890, 020 7946 0958, 081234567890
    r"|(?P<national>0\d{1,4}(?:[ \-]\d{2,5}){1,3}|0[1-9]\d{7,11})"
    r")"
)
_NUMBERS = re.compile(_NUM_START + _NUMBER_KINDS + _NUM_END_JOINED, _A)
# The same numbers right after a letter and a ``_`` or ``-`` (``card_4111...``,
# ``ssn_123-45-6789``, ``phone-+14155552671``); `_number` checks that the word before is
# made of letters only (`_JOINED_WORDS`). Run only when `_joined_candidate` finds one:
# an alternation of start rules costs twice the scan.
_JOINED_NUMBERS = re.compile(r"(?<=[A-Za-z][_\-])" + _NUMBER_KINDS + _NUM_END_JOINED, _A)
# The words a number may be joined to: letters only, up to four of them joined by ``_``
# or ``-``, starting a token. Hex segments of UUIDs and ids (``41d4-a716-4466...``) and
# codes such as ``ORD-2024-000123`` never qualify.
_JOINED_WORDS = re.compile(r"(?<![\w\-])(?:[A-Za-z]+[_\-]){1,4}\Z", _A)


_DIGIT_GROUP = re.compile(r"\d+", _A)


def _card(text: str) -> str:
    """A card-shaped run whose digits fail the Luhn check as a whole may still hold a
    card with a digit group of other text beside it (``4111 1111 1111 1111 0``): the
    longest Luhn-valid run of whole groups, leftmost first, is redacted, then the rest."""
    groups = [(found.start(), found.end()) for found in _DIGIT_GROUP.finditer(text)]
    for first, (begin, _) in enumerate(groups):
        if text[begin] not in "23456":
            continue
        count = 0
        best = None
        for last in range(first, len(groups)):
            count += groups[last][1] - groups[last][0]
            if count > 19:
                break
            if count >= 13 and luhn_valid(_only_digits(text[begin : groups[last][1]])):
                best = groups[last][1]
        if best is not None:
            return f"{text[:begin]}[REDACTED_CC]{_card(text[best:])}"
    return text


# The words a number may be joined to: letters only, up to four of them joined by ``_``
# or ``-``, starting a token. Hex segments of UUIDs and ids (``41d4-a716-4466...``) and
# codes such as ``ORD-2024-000123`` never qualify.
_JOINED_WORDS = re.compile(r"(?<![\w\-])(?:[A-Za-z]+[_\-]){1,4}\Z", _A)


def _number(match: re.Match[str]) -> str:
    text = match.group()
    if match.re is _JOINED_NUMBERS:
        start = match.start()
        if _JOINED_WORDS.search(match.string, max(0, start - 80), start) is None:
            return text
    if match.group("ssn") is not None:
        return "[REDACTED_SSN]"
    digits = _only_digits(text)
    if match.group("card") is not None:
        return "[REDACTED_CC]" if luhn_valid(digits) else _card(text)
    if match.group("nanp") is not None:
        return "[REDACTED_PHONE]"
    low = 9 if match.group("national") is not None else 8
    return "[REDACTED_PHONE]" if low <= len(digits) <= 15 else text


# One byte per character class: ASCII letters "a", "_" and "-" "_", a digit, "+" or "("
# (what a number starts with) "d", anything else "x" (computed in C, like `_SHAPE`).
_JOIN_SHAPE = bytes(
    ord("a")
    if chr(byte).isascii() and chr(byte).isalpha()
    else ord("_")
    if chr(byte) in "_-"
    else ord("d")
    if chr(byte) in "0123456789+("
    else ord("x")
    for byte in range(256)
)
_LETTER_OR_JOIN = frozenset(b"a_")
_DIGIT = ord("d")


def _joined_candidate(encoded: bytes) -> bool:
    """Whether a text (`encoded` in UTF-8) may hold a number joined to a word (see
    `_JOINED_NUMBERS`): letters, ``_`` and ``-`` starting a token (no digit before them),
    then a digit, ``+`` or ``(``. A few byte searches, so the hex segments of UUIDs and
    ids (``e29b-41d4``) cost no number regex."""
    shape = encoded.translate(_JOIN_SHAPE)
    index = shape.find(b"a_d")
    while index >= 0:
        before = index - 1
        while before >= 0 and shape[before] in _LETTER_OR_JOIN:
            before -= 1
        if before < 0 or shape[before] != _DIGIT:
            return True
        index = shape.find(b"a_d", index + 3)
    return False


def _cookie(match: re.Match[str]) -> str:
    quote = match.group("quote") or ""
    return f"{match.group(1)}{quote}{REDACTED}{quote}"


PII_PATTERNS: list[tuple[re.Pattern[str], Replacement]] = [
    (_URL_CREDENTIALS, r"\1[REDACTED]@"),
    (_JWT, "[REDACTED_JWT]"),
    (_AUTH_SCHEME, r"\1\2[REDACTED]"),
    (_COOKIE_HEADER, _cookie),
    (_SECRET_ASSIGNMENT, r"\1[REDACTED]"),
    (_EMAIL, "[REDACTED_EMAIL]"),
    (_NUMBERS, _number),
    (_JOINED_NUMBERS, _number),
]
"""The (compiled pattern, replacement) pairs applied, in order, to every string.

Edit it in place (``PII_PATTERNS.append((re.compile(...), "[REDACTED_X]"))``) to add
your own; replacements may be functions of the match, as with `re.sub`. The defaults
are: credentials in URLs, JWTs, ``Bearer``/``Basic`` credentials, ``Cookie:`` and
``Set-Cookie:`` header values, ``password=...``-style assignments in free text (also
bracketed: ``user[password]=``), e-mail addresses (internationalised too), and one
pattern for numbers (payment cards, Luhn-checked; SSNs; phone numbers,
digit-count-checked), also when joined to a word by ``_`` or ``-`` (``card_4111...``). While the list holds exactly
the defaults, cheap checks skip the patterns a string cannot match; once it is changed
every pattern runs on every string.
"""

_DEFAULTS: list[tuple[re.Pattern[str], Replacement]] = list(PII_PATTERNS)
_DEFAULT_LIST = PII_PATTERNS
# Every number pattern needs seven consecutive characters among digits and "( ) . - ",
# so the string's "shape" (one byte per character class, computed in C) must contain
# seven such bytes in a row before the number pattern is worth running.
_SHAPE = bytes(ord("d") if chr(byte) in "0123456789 ().-" else ord("x") for byte in range(256))
_SEVEN = b"ddddddd"
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "key")


def _redact_defaults(text: str) -> str:
    at_sign = "@" in text or "%40" in text  # an e-mail in a percent-encoded query too
    jwt = "eyJ" in text
    lowered = text.lower()
    scheme = "bearer" in lowered or "basic" in lowered
    cookie = ":" in text and "cookie" in lowered
    assignment = ("=" in text or ":" in text) and (
        "pass" in lowered
        or "pwd" in lowered
        or "secret" in lowered
        or "token" in lowered
        or "key" in lowered
    )
    encoded = text.encode("utf-8", "ignore")
    numbers = _SEVEN in encoded.translate(_SHAPE)
    if not (at_sign or jwt or scheme or cookie or assignment or numbers):
        return text
    # Same order as PII_PATTERNS; placeholders never create a new trigger, so gates
    # computed on the original text stay valid for the partially redacted one.
    result = text
    if at_sign and "://" in text:
        result = _URL_CREDENTIALS.sub(r"\1[REDACTED]@", result)
    if jwt:
        result = _JWT.sub("[REDACTED_JWT]", result)
    if scheme:
        result = _AUTH_SCHEME.sub(r"\1\2[REDACTED]", result)
    if cookie:
        result = _COOKIE_HEADER.sub(_cookie, result)
    if assignment:
        result = _SECRET_ASSIGNMENT.sub(r"\1[REDACTED]", result)
    if at_sign:
        result = _EMAIL.sub("[REDACTED_EMAIL]", result)
    if numbers:
        result = _NUMBERS.sub(_number, result)
        if ("-" in text or "_" in text) and _joined_candidate(encoded):
            result = _JOINED_NUMBERS.sub(_number, result)
    return result


_cache: dict[str, str] = {}
_CACHE_MAX_TEXT = 256
_CACHE_SIZE = 4096
_ID_LENGTH = 16  # span ids; trace ids, UUIDs in hex and ULIDs are longer


def redact_text(text: str) -> str:
    """Apply `PII_PATTERNS` to one string; returns the same object when nothing matched."""
    patterns = PII_PATTERNS
    if patterns is _DEFAULT_LIST and patterns == _DEFAULTS:
        # Log values repeat (methods, routes, user agents, event names): short strings
        # are memoised. The cache is dropped whole when full, which bounds its memory.
        cached = _cache.get(text)
        if cached is not None:
            return cached
        if len(text) >= _ID_LENGTH and text.isascii() and text.isalnum() and not text.isdigit():
            # Hex trace, span and request ids, unique per line: no default pattern can
            # match a run of ASCII letters and digits with a letter in it (each needs a
            # separator, or a whole-string match of digits only), so they are neither
            # scanned nor allowed to push the repeated values out of the memo. Shorter
            # words ("GET", "request") are memoised as usual: a lookup is cheaper still.
            return text
        result = _redact_defaults(text)
        if result == text:
            result = text
        if len(text) <= _CACHE_MAX_TEXT:
            if len(_cache) >= _CACHE_SIZE:
                _cache.clear()
            _cache[text] = result
        return result
    result = text
    for pattern, replacement in patterns:
        result = pattern.sub(replacement, result)
    return text if result == text else result


def uses_default_patterns() -> bool:
    """Whether `PII_PATTERNS` holds exactly the defaults, so `redact_text` leaves alone
    what no default pattern can match: numbers are never redacted, and nor are strings
    of 16 or more ASCII letters and digits with a letter in them (hex trace, span and
    request ids). Writers that know their values are of that kind skip the call while
    this holds; once the list is changed every string must go through `redact_text`.
    """
    patterns = PII_PATTERNS
    return patterns is _DEFAULT_LIST and patterns == _DEFAULTS


def _defaults_memo() -> dict[str, str] | None:
    """`redact_text`'s memo while the default patterns are in force, else None.

    An entry is exactly what `redact_text` returns for its key, so hot paths look values
    up here first and save the call for the values seen before.
    """
    patterns = PII_PATTERNS
    return _cache if patterns is _DEFAULT_LIST and patterns == _DEFAULTS else None


_SUFFIXES = tuple(SENSITIVE_KEYS)
_key_cache: dict[str, bool] = {}
_KEY_CACHE_LIMIT = 4096


def is_sensitive_key(key: object) -> bool:
    """Whether values under `key` are secrets, whatever they look like (see `SENSITIVE_KEYS`)."""
    if not isinstance(key, str):
        return False
    cached = _key_cache.get(key)
    if cached is not None:
        return cached
    normalized = key.lower().replace("-", "_")
    sensitive = normalized.endswith(_SUFFIXES)
    # Keys can come from user data: the memo is bounded in entries and, by skipping
    # long keys, in bytes (an entry count alone bounds nothing against 8 KB keys).
    if len(key) <= _CACHE_MAX_TEXT and len(_key_cache) < _KEY_CACHE_LIMIT:
        _key_cache[key] = sensitive
    return sensitive


def _normalize_param(name: str) -> str:
    return name.lower().replace("-", "_")


_DEFAULT_PARAMS = frozenset(_normalize_param(name) for name in DEFAULT_SENSITIVE_QUERY_PARAMS)
_params_cache: dict[Collection[str], frozenset[str]] = {}


def _sensitive_params(names: Collection[str]) -> frozenset[str]:
    """`names` normalized once: the default and any hashable collection are memoised."""
    if names is DEFAULT_SENSITIVE_QUERY_PARAMS:
        return _DEFAULT_PARAMS
    try:
        cached = _params_cache.get(names)
    except TypeError:  # an unhashable collection (a list): normalized every time
        return frozenset(_normalize_param(name) for name in names)
    if cached is None:
        cached = frozenset(_normalize_param(name) for name in names)
        if len(_params_cache) < 64:
            _params_cache[names] = cached
    return cached


_BRACKETS = re.compile(r"[\[\]]+")


def _sensitive_param(decoded_name: str, sensitive: frozenset[str]) -> bool:
    """Whether a query parameter's value is a secret: its name, or for a bracketed form
    name (``user[password]``, ``password[]``, ``a[b][api_key]``) any part of it, is in
    `sensitive` or matches the sensitive-key rule."""
    if _normalize_param(decoded_name) in sensitive or is_sensitive_key(decoded_name):
        return True
    if "[" not in decoded_name:
        return False
    return any(
        _normalize_param(part) in sensitive or is_sensitive_key(part)
        for part in _BRACKETS.split(decoded_name)
        if part
    )


def _decode(part: str) -> str:
    return unquote_plus(part) if ("%" in part or "+" in part) else part


def _redacted_part(raw: str, decoded: str) -> str:
    """A query name or value as sent, unless its decoded form holds something to redact
    (``%40`` is an ``@`` too): then the redacted text, percent-encoded again."""
    redacted = redact_text(decoded)
    return raw if redacted == decoded else quote(redacted, safe="[]_")


def redact_query(
    query: str, *, sensitive_params: Collection[str] = DEFAULT_SENSITIVE_QUERY_PARAMS
) -> str:
    """A raw URL query string with its secrets and personal data redacted.

    The one implementation behind the access log's ``path`` and the span's ``url.query``,
    so both write the same text for the same request. The value of a parameter named in
    `sensitive_params` or matching the sensitive-key rule (`is_sensitive_key`) becomes
    `REDACTED`; every other name and value is checked percent-decoded
    (``email=bob%40example.com`` hides the ``@``) and, when that reveals something,
    replaced by its redacted form, percent-encoded again; untouched parts stay exactly as
    sent. Bracketed form names count by their parts (``user[password]=``, ``password[]=``).
    A last pass over the whole result catches what only shows across a name and its
    value (``pwd=hunter2``). Untrusted input is bounded: the first `MAX_QUERY_LENGTH`
    characters and `MAX_QUERY_PARAMS` parameters are kept, further ones become ``...``.
    """
    sensitive = _sensitive_params(sensitive_params)
    if len(query) > MAX_QUERY_LENGTH:
        query = query[:MAX_QUERY_LENGTH]
    pairs = query.split("&", MAX_QUERY_PARAMS)
    rest = pairs.pop() if len(pairs) > MAX_QUERY_PARAMS else None
    out: list[str] = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        decoded_name = _decode(name)
        safe_name = _redacted_part(name, decoded_name)
        if not sep:
            out.append(safe_name)
        elif _sensitive_param(decoded_name, sensitive):
            out.append(f"{safe_name}={REDACTED}")
        else:
            out.append(f"{safe_name}={_redacted_part(value, _decode(value))}")
    if rest is not None:
        out.append("...")
    return redact_text("&".join(out))


# A URL or path with a query inside free text: ``GET /cb?code=x HTTP/1.1``,
# ``https://host/cb?code=x``, ``https://host?code=x``. The query ends at whitespace, a
# double quote, ``<``/``>`` (the delimiters logs and HTML put around URLs) or a fragment.
_URL_QUERY = re.compile(
    r"((?:[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#\"<>]*)?/[^\s?#\"<>]*"
    r"|[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#\"<>]+)"
    r"\?([^\s#\"<>]+)",
    _A,
)


def _redacted_url_query(match: re.Match[str]) -> str:
    return f"{match.group(1)}?{redact_query(match.group(2))}"


def redact_url_queries(text: str) -> str:
    """`text` with the query of every URL or path in it passed through `redact_query`.

    For free text that may quote a request line or a URL: a server's access line
    (``"GET /cb?code=abc&key=k HTTP/1.1" 200``), a library's ``fetching https://...?sig=``.
    Parameters such as ``code``, ``key`` or ``X-Amz-Signature`` only say they hold a
    secret inside a query, so `redact_text` alone cannot know them. Returns `text`
    itself when it holds no ``?`` followed by a ``=``.
    """
    if "?" not in text or "=" not in text:
        return text
    result = _URL_QUERY.sub(_redacted_url_query, text)
    return text if result == text else result


def redact_path(path: str) -> str:
    """A request target (``/cb?code=abc``) with its query redacted by `redact_query`.

    Everything after the first ``?`` is the query, whatever characters it holds, which is
    what a server logs as the path; the path part itself goes through `redact_text`.
    """
    target, sep, query = path.partition("?")
    if not sep:
        return redact_text(path)
    return f"{redact_text(target)}?{redact_query(query)}"


_PASSTHROUGH_KEYS = frozenset({"_record", "_from_structlog"})  # ProcessorFormatter internals


def _clean(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if value is None or kind is int or kind is bool:
        return value
    if kind is float:
        # NaN and infinities are not JSON; json.dumps would write invalid tokens.
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return "[MAX_DEPTH]"
    if isinstance(value, Mapping):
        return _clean_mapping(value, depth)
    if kind is list or kind is tuple:
        if len(value) == 2:
            first = value[0]
            # the memo of is_sensitive_key first: a lookup costs less than a call
            sensitive = _key_cache.get(first) if type(first) is str else None
            if sensitive is None:
                sensitive = _sensitive_name(first)
            if sensitive:
                # a (name, value) pair: ``request.headers.items()``, ``scope["headers"]``
                pair = [_clean(first, depth + 1), REDACTED]
                return pair if kind is list else tuple(pair)
        if len(value) > MAX_ITEMS:
            return _clean_items(value, len(value), depth)
        cleaned = [_clean(item, depth + 1) for item in value]
        return cleaned if kind is list else tuple(cleaned)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return redact_text(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, float) and not math.isfinite(value):  # a float subclass NaN/inf
        return str(float(value))
    if isinstance(value, (int, float)):  # IntEnum, numpy-free subclasses: keep numeric
        return value
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, list, tuple, KeysView, ValuesView, ItemsView)):
        # sets, named tuples, ``dict.items()`` (whose pairs follow the rule above)
        return _clean_items(value, len(value), depth)
    if isinstance(value, BaseException):
        return redact_text(_safe_str(value, exception=True))
    return redact_text(_safe_str(value))


def _sensitive_name(name: object) -> bool:
    """The sensitive-key rule for a pair's or a mapping's name, str or bytes (ASGI headers)."""
    if isinstance(name, str):
        return is_sensitive_key(name)
    if isinstance(name, (bytes, bytearray)):
        return is_sensitive_key(bytes(name).decode("latin-1"))
    return False


def _clean_mapping(value: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
    cleaned: dict[Any, Any] = {}
    for count, (key, item) in enumerate(value.items()):
        if count == MAX_ITEMS:
            cleaned[TRUNCATED] = f"{len(value) - MAX_ITEMS} more items"
            break
        name = _clean_key(key)
        if name in cleaned:  # two keys redacted alike: keep both values
            suffix = 2
            while f"{name}#{suffix}" in cleaned:
                suffix += 1
            name = f"{name}#{suffix}"
        cleaned[name] = REDACTED if _sensitive_name(key) else _clean(item, depth + 1)
    return cleaned


def _clean_items(value: Iterable[Any], length: int, depth: int) -> list[Any]:
    cleaned = [_clean(item, depth + 1) for item in itertools.islice(value, MAX_ITEMS)]
    if length > MAX_ITEMS:
        cleaned.append(f"{TRUNCATED} {length - MAX_ITEMS} more items")
    return cleaned


def _clean_key(key: Any) -> Any:
    kind = type(key)
    if kind is str:
        return redact_text(key)  # {"alice@example.com": 3} is personal data too
    if key is None or isinstance(key, (int, float, bool)):
        return key
    if kind is bytes or kind is bytearray:
        return redact_text(bytes(key).decode("utf-8", "backslashreplace"))
    return redact_text(_safe_str(key))  # JSON objects only have string keys


def _safe_str(value: Any, *, exception: bool = False) -> str:
    try:
        text = str(value)
    except Exception:
        return f"<unprintable {type(value).__qualname__}>"
    if exception:
        name = type(value).__qualname__
        return f"{name}: {text}" if text else name
    return text


@overload
def redact(value: str) -> str: ...
@overload
def redact(value: Any) -> Any: ...
def redact(value: Any) -> Any:
    """Return `value` with personal data and secrets replaced by placeholders.

    Strings go through `PII_PATTERNS`; dicts, lists and tuples are rebuilt recursively
    (values under sensitive keys become ``[REDACTED]``, and keys are redacted like
    strings); a two-item tuple or list whose first item is a sensitive name, str or
    bytes, is a ``(name, value)`` pair and its value becomes ``[REDACTED]`` too, so
    ``request.headers.items()`` and ``scope["headers"]`` are safe to log; bytes are
    decoded leniently and redacted; datetimes become ISO strings; ints, bools and None
    are unchanged; any other object is rendered with ``str()`` and redacted. Output is
    bounded: containers deeper than `MAX_DEPTH` become ``[MAX_DEPTH]`` and only the
    first `MAX_ITEMS` items of a container are kept (a `TRUNCATED` marker says how many
    more there were). It never raises.
    """
    try:
        return _clean(value, 0)
    except Exception:  # a pathological object (e.g. a mapping whose items() raises)
        return f"<unredactable {type(value).__qualname__}>"


class PIIRedactor:
    """A structlog processor applying `redact` to every value of the event dict.

    Values under sensitive keys are replaced whatever they are; everything else is
    redacted recursively and made JSON-safe (bytes, datetimes, arbitrary objects become
    strings), so the renderer after it cannot raise. Put it after ``format_exc_info`` so
    exception text is covered too.

    Args:
        sensitive_keys: key endings to redact wholesale; defaults to `SENSITIVE_KEYS`.
    """

    def __init__(self, *, sensitive_keys: Iterable[str] | None = None) -> None:
        if sensitive_keys is None:
            self._is_sensitive: Callable[[object], bool] = is_sensitive_key
        else:
            suffixes = tuple(k.lower().replace("-", "_") for k in sensitive_keys)

            def is_sensitive(key: object) -> bool:
                return isinstance(key, str) and key.lower().replace("-", "_").endswith(suffixes)

            self._is_sensitive = is_sensitive

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        is_sensitive = self._is_sensitive
        known = _key_cache if is_sensitive is is_sensitive_key else None
        # Most values of a line were seen before; a lookup costs less than a call.
        for key in event_dict:
            sensitive = known.get(key) if known is not None else None
            if sensitive is None:
                sensitive = is_sensitive(key)
            if sensitive:
                event_dict[key] = REDACTED
        redact_plain_values(event_dict, _PASSTHROUGH_KEYS)
        return event_dict


def redact_plain_values(
    event_dict: MutableMapping[str, Any], passthrough: frozenset[str] = frozenset()
) -> None:
    """The value rules of `PIIRedactor`, for keys already known not to be sensitive.

    The access log calls it directly: its own keys are fixed names that are neither
    sensitive nor ProcessorFormatter internals, so their sensitivity need not be looked
    up per line. Non-scalar values under `passthrough` keys are left alone.
    """
    memo = _defaults_memo()
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            redacted = memo.get(value) if memo is not None else None
            if redacted is None:
                redacted = redact_text(value)
            if redacted is not value:
                event_dict[key] = redacted
        elif not (value is None or kind is int or kind is bool or kind is float):
            if key not in passthrough:
                event_dict[key] = redact(value)
        elif kind is float and not math.isfinite(value):
            event_dict[key] = str(value)
