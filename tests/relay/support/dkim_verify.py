"""Verifies every DKIM-Signature of the message on stdin with dkimpy (Debian's
python3-dkim), an implementation independent of the one that signed, fetching the public
keys from the test's DNS server over TCP (127.0.0.1, port in argv[1]).

Prints one JSON object per signature, in header order:
{"d": ..., "s": ..., "a": ..., "h": ..., "l": bool, "ok": bool, "error": ...}
"""
import io
import json
import logging
import re
import sys

import dkim
import dkim.util
import dns.resolver

resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])


def txt(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = resolver.resolve(name, "TXT", tcp=True, lifetime=timeout)
    except Exception:
        return None
    for record in answer:
        return b"".join(record.strings)
    return None


message = sys.stdin.buffer.read()
d = dkim.DKIM(message)
signatures = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
for i, value in enumerate(signatures):
    tags = dkim.util.parse_tag_value(value)
    out = {
        "d": tags.get(b"d", b"").decode(),
        "s": tags.get(b"s", b"").decode(),
        "a": tags.get(b"a", b"").decode(),
        "h": re.sub(r"\s", "", tags.get(b"h", b"").decode()),
        "l": b"l" in tags,
    }
    # dkimpy says why a signature fails in its debug log: kept as the error.
    log = io.StringIO()
    logger = logging.getLogger("dkim%d" % i)
    logger.addHandler(logging.StreamHandler(log))
    logger.setLevel(logging.DEBUG)
    try:
        out["ok"] = bool(dkim.DKIM(message, logger=logger).verify(idx=i, dnsfunc=txt))
        out["error"] = None if out["ok"] else log.getvalue()
    except Exception as e:  # a verification that raises is a failure, with why
        out["ok"] = False
        out["error"] = repr(e) + " " + log.getvalue()
    print(json.dumps(out))
