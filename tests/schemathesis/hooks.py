"""Rules of medflow's API that a JSON Schema cannot state, applied to generated requests.

The OpenAPI document says each in the field's description; schemathesis cannot read prose,
so these hooks make otherwise generated values meet them:
- a SNILS (`format: snils`) ends with the checksum of its first nine digits;
- a birth date is after 1900-01-01 and not in the future;
- an appointment starts in the future and at most two years ahead.
Only values that already match the schema are adjusted (a negative case stays negative).

One quirk of schemathesis 4.32.5 is worked around here too: it knows `If-Match` as a
standard header and, in the coverage phase, sends values such as `0` as *valid* ones,
ignoring the pattern the document declares (`^(\*|(W/)?"[1-9][0-9]{0,17}")$`). A positive
case carrying such a value drops the header (it is optional); negative cases keep it.
"""

import datetime
import re

import schemathesis
from hypothesis import strategies as st


def snils_checksum(first_nine):
    """The checksum as actors/src/domain/values.rs computes it."""
    total = sum(int(d) * (9 - i) for i, d in enumerate(first_nine))
    if total < 100:
        return total
    if total in (100, 101):
        return 0
    rest = total % 101
    return 0 if rest == 100 else rest


schemathesis.openapi.format(
    "snils",
    st.from_regex(r"\A[0-9]{9}\Z").map(lambda nine: f"{nine}{snils_checksum(nine):02d}"),
)


def _fix_birth_date(value):
    try:
        date = datetime.date.fromisoformat(value)
    except (TypeError, ValueError):
        return value
    today = datetime.date.today()
    if date <= datetime.date(1900, 1, 1) or date > today:
        return datetime.date(1900 + date.toordinal() % 120, date.month, min(date.day, 28)).isoformat()
    return value


def _fix_start(value):
    try:
        start = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, TypeError, ValueError):
        return value
    if start.tzinfo is None:
        return value
    now = datetime.datetime.now(datetime.timezone.utc)
    # A minute past now keeps it in the future however long the request takes; hours up to a
    # year ahead, derived from the drawn value so shrinking stays deterministic.
    ahead = datetime.timedelta(minutes=60 + start.toordinal() % (365 * 24 * 60))
    if start <= now or start - now > datetime.timedelta(days=700):
        return (now + ahead).isoformat()
    return value


IF_MATCH = re.compile(r'\A(\*|(W/)?"[1-9][0-9]{0,17}")\Z')


def _positive(case):
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    return mode is not None and str(getattr(mode, "value", mode)) == "positive"


@schemathesis.hook
def before_call(context, case, kwargs):
    """Every phase's requests pass here (examples and coverage too, which `map_body` misses)."""
    headers = case.headers
    if headers and "If-Match" in headers and _positive(case):
        if not IF_MATCH.match(str(headers["If-Match"])):
            del headers["If-Match"]
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("birthDate"), str):
        body["birthDate"] = _fix_birth_date(body["birthDate"])
    if isinstance(body.get("startsAt"), str):
        body["startsAt"] = _fix_start(body["startsAt"])
    if isinstance(body.get("snils"), str) and re.fullmatch(r"[0-9]{11}", body["snils"]):
        nine = body["snils"][:9]
        body["snils"] = f"{nine}{snils_checksum(nine):02d}"
