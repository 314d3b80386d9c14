"""schemathesis hooks for scripts/schemathesis.

Every generated Idempotency-Key becomes a fresh UUID. Hypothesis likes to
reuse small values ("0", "") across cases, and the same key with another
request is rightly a 422 (draft-ietf-httpapi-idempotency-key-header), which
the positive-data check would take for a schema-valid request refused. The
key's behaviour is tested in tests/api/idempotency.rs; here the header's
presence is still exercised on every operation that takes it.

A search cursor (`after` of .../messages/search) is opaque: only the
service makes valid ones, so a generated string is rightly a 422, which the
same check would take for a schema-valid request refused. It is dropped
from generated searches; cursors are tested in tests/api/search_topk.rs.
"""
import uuid

import schemathesis


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    # Every phase (coverage, fuzzing, stateful) sends through here.
    for name in list(case.headers or {}):
        if name.lower() == "idempotency-key":
            case.headers[name] = str(uuid.uuid4())
    if case.path.endswith("/messages/search") and case.query and "after" in case.query:
        del case.query["after"]
