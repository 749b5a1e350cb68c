"""Hooks of scripts/schemathesis.

Clients are told to use a fresh Idempotency-Key per request; a key used again
for another request is answered 422 `idempotency_key_reused`, as documented.
Generated data repeats simple values ("0", "a") across requests, so in a
positive case a valid generated key is made unique just before the call; an
invalid one (empty, too long, not visible ASCII) is left as generated, to be
refused with 400.

A birthday (`PATCH /api/profile/details`) may not be in the future, which no
static schema can say (its pattern takes real dates of 1900 to 2099): in a
positive case a generated birthday after today becomes today.
"""

import datetime
import re
import uuid

import schemathesis

MAX_KEY = 255


# What the server takes as a key (the pattern of the header in
# /openapi.json): visible ASCII with spaces inside, spaces and tabs around.
# Anything it takes must be made unique.
KEY = re.compile(r"^[\t ]*[!-~]([ -~]{0,253}[!-~])?[\t ]*\Z")


def _valid(key):
    return isinstance(key, str) and KEY.match(key) is not None


def _positive(case):
    meta = getattr(case, "_meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    return mode is None or str(getattr(mode, "value", mode)) == "positive"


@schemathesis.hook
def before_call(context, case, kwargs):
    # A negative case is refused whatever its key; leaving it untouched keeps
    # what it tests (a missing header, say) as generated.
    if not _positive(case):
        return
    _birthday_not_in_future(case)
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and _valid(headers[name]):
            stripped = headers[name].strip(" \t")
            unique = f"{stripped}-{uuid.uuid4()}"
            headers[name] = unique[-MAX_KEY:]


def _birthday_not_in_future(case):
    operation = getattr(case, "operation", None)
    path = getattr(operation, "path", None)
    body = getattr(case, "body", None)
    if path != "/api/profile/details" or not isinstance(body, dict):
        return
    birthday = body.get("birthday")
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    # ISO dates compare as strings.
    if isinstance(birthday, str) and birthday > today:
        body["birthday"] = today
