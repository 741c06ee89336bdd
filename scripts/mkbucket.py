#!/usr/bin/env python3
"""Create a bucket on a loopback S3 server or a container on Azurite.

Used by the test harness and the benchmark scripts; stdlib only.
  mkbucket.py s3 http://127.0.0.1:9000/bucket
  mkbucket.py azure http://127.0.0.1:10000/devstoreaccount1/container
The S3 request is unsigned (moto does not check signatures); the Azure one
is signed with the emulator's well-known SharedKey.
"""
import base64
import hashlib
import hmac
import sys
import urllib.error
import urllib.request
from email.utils import formatdate

AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def s3(url):
    req = urllib.request.Request(url, method="PUT", data=b"")
    urllib.request.urlopen(req, timeout=10).read()


def azure(url):
    scheme, rest = url.split("://", 1)
    host, path = rest.split("/", 1)
    account, container = path.split("/", 1)
    date = formatdate(usegmt=True)
    version = "2021-08-06"
    canon_headers = f"x-ms-date:{date}\nx-ms-version:{version}\n"
    canon_resource = f"/{account}/{account}/{container}\nrestype:container"
    # urllib always sends a Content-Type with a body, so it is signed too.
    to_sign = "PUT\n\n\n\n\napplication/octet-stream\n" + "\n" * 6 + canon_headers + canon_resource
    sig = base64.b64encode(
        hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    req = urllib.request.Request(
        f"{scheme}://{host}/{account}/{container}?restype=container",
        method="PUT",
        data=b"",
        headers={
            "x-ms-date": date,
            "x-ms-version": version,
            "Authorization": f"SharedKey {account}:{sig}",
            "Content-Length": "0",
            "Content-Type": "application/octet-stream",
        },
    )
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError as e:
        if e.code != 409:  # already exists
            raise SystemExit(f"create container failed: {e.code} {e.read()[:300]!r}")


if __name__ == "__main__":
    kind, url = sys.argv[1], sys.argv[2]
    {"s3": s3, "azure": azure}[kind](url)
