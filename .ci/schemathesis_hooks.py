"""Schemathesis hooks of `.ci/schemathesis`: keep every generated request on this machine,
and give the generator what the document says in words where JSON Schema has no keyword.

1. Generated creates, pre-warms and pool specs carry random `image.url` and `callback_url`
   values. One the server would accept (the `ImageUrl` pattern of src/api/openapi.json) is
   pointed at this machine before it is sent: http(s) at 127.0.0.1:9 (discard: nothing
   listens, so a download or a callback fails at once) and file:// at the small demo image
   in testdata/ (the only folder `--file-image-dir` allows). An oci:// URL, which only a tart
   host pulls (this server runs VMware and answers 400 invalid-image-url to any), becomes
   https://127.0.0.1:9/ with its path. Otherwise the scheme and the path stay
   as generated, so a valid request stays valid and an invalid one (which the server
   refuses before it connects anywhere) is sent unchanged.
2. A body sent as application/x-www-form-urlencoded or text/plain is JSON text
   (`contentMediaType` and `contentSchema`, which JSON Schema only annotates): a positive
   one is replaced by the JSON text of a valid body of the same operation.
3. guestinfo keys that differ only in case are refused (VMX keys ignore case): a positive
   body keeps the first of such keys.
4. A VM's vmware.log exists once VMware has started the VM. The VMs of this run never get
   that far (their images never verify), so the log of a VM just created answers
   404 vm-log-not-found, as the document says; the stateful phase's "created resource not
   found" is dropped for that answer alone.
"""

import json
import os
import random
import re
import threading

import schemathesis

DEMO_IMAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testdata", "demo-image.tar.gz"
)
JSON_TEXT_TYPES = ("application/x-www-form-urlencoded", "text/plain")

# Characters the server refuses anywhere in a URL: controls (Unicode Cc) and the space.
_BAD = "\u0000-\u0020\u007f-\u009f"
_NETWORK = re.compile(
    rf"^(?P<scheme>[hH][tT][tT][pP][sS]?)://(?:[^/?#{_BAD}]*@)?[^/?#@:{_BAD}][^/?#@{_BAD}]*"
    rf"(?P<rest>(?:[/?#][^{_BAD}]*)?)\Z"
)
_FILE = re.compile(rf"^[fF][iI][lL][eE]:///[^{_BAD}]*\Z")
# What the document admits as oci://: this VMware server refuses every one (tart pulls them).
_OCI = re.compile(rf"^[oO][cC][iI]://[^/?#@{_BAD}]+/(?P<rest>[^?#{_BAD}]+)\Z")
_MAX_URL_CHARS = 4096

# Valid JSON bodies seen per operation, for the JSON text of form and text/plain bodies.
_seen = {}
_seen_lock = threading.Lock()
_random = random.Random(0)


def _local(url):
    """`url` pointed at this machine if the server would accept it; otherwise unchanged."""
    if not isinstance(url, str) or len(url) > _MAX_URL_CHARS:
        return url
    match = _NETWORK.match(url)
    if match:
        return f"{match['scheme']}://127.0.0.1:9{match['rest']}"[:_MAX_URL_CHARS]
    if _FILE.match(url):
        return "file://" + DEMO_IMAGE
    match = _OCI.match(url)
    if match:
        return f"https://127.0.0.1:9/{match['rest']}"[:_MAX_URL_CHARS]
    return url


def _localise(value):
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("callback_url"), str):
        value["callback_url"] = _local(value["callback_url"])
    if isinstance(value.get("url"), str):
        value["url"] = _local(value["url"])
    image = value.get("image")
    if isinstance(image, dict) and isinstance(image.get("url"), str):
        image["url"] = _local(image["url"])
    return value


def _one_guestinfo_key_per_case(body):
    guestinfo = body.get("guestinfo")
    if not isinstance(guestinfo, dict):
        return
    kept = set()
    for key in list(guestinfo):
        if key.lower() in kept:
            del guestinfo[key]
        kept.add(key.lower())


def _minimal_body(operation):
    """A valid body of `operation` for when no generated one has been seen yet."""
    image = {"url": "http://127.0.0.1:9/image.tar.gz", "checksum": "0" * 40, "checksum_type": "sha1"}
    if operation.startswith("POST /images"):
        return image
    if operation.startswith("PUT /pools"):
        return {"image": image, "size": 0}
    return {"image": image}


def _mode(case, location):
    meta = case.meta
    if meta is None:
        return None
    for where, info in meta.components.items():
        if str(getattr(where, "value", where)) == location:
            return str(info.mode)
    return str(meta.generation.mode)


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    operation = f"{case.operation.method.upper()} {case.operation.path}"
    positive = _mode(case, "body") == "positive"
    if isinstance(body, dict):
        _localise(body)
        if positive:
            _one_guestinfo_key_per_case(body)
            if case.media_type == "application/json":
                with _seen_lock:
                    bodies = _seen.setdefault(operation, [])
                    if len(bodies) < 200:
                        bodies.append(json.loads(json.dumps(body)))
        return
    if positive and case.media_type in JSON_TEXT_TYPES and isinstance(body, str):
        with _seen_lock:
            bodies = _seen.get(operation) or [_minimal_body(operation)]
            chosen = _random.choice(bodies)
        case.body = json.dumps(chosen)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if getattr(failure, "code", None) != "ST302" or response.status_code != 404:
        return True
    try:
        code = json.loads(response.content).get("code")
    except (ValueError, AttributeError):
        return True
    return code != "vm-log-not-found"
