#!/usr/bin/env python3
"""Writes N distinct Twilio-signed inbound webhooks, one per line as
`<signature>\t<form body>`, for wrk-webhooks.lua. Signed exactly as Twilio
signs (TWILIO.md section 1): HMAC-SHA1 over the public URL + sorted params.

usage: make-webhooks.py N SENDERS PUBLIC_URL AUTH_TOKEN ACCOUNT_SID TO > file
"""
import base64, hashlib, hmac, os, sys
from urllib.parse import urlencode

n, senders = int(sys.argv[1]), int(sys.argv[2])
url, token, account, to = sys.argv[3:7]
run = os.urandom(8).hex()
out = sys.stdout
for i in range(n):
    sid = f"SM{run}{i:016x}"
    params = [
        ("ToCountry", "US"), ("SmsMessageSid", sid), ("NumMedia", "0"), ("SmsSid", sid),
        ("SmsStatus", "received"), ("Body", f"load test {i}"), ("To", to), ("NumSegments", "1"),
        ("MessageSid", sid), ("AccountSid", account), ("From", f"+1555{i % senders:07d}"),
        ("ApiVersion", "2010-04-01"),
    ]
    signed = url + "".join(k + v for k, v in sorted(params))
    sig = base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    out.write(f"{sig}\t{urlencode(params)}\n")
