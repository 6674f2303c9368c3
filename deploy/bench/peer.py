"""The Python peer of smsgate-ingress for deploy/bench-ingress.sh: the same
job done the usual way, with FastAPI on uvicorn (uvloop, httptools) and
nats-py. For each webhook it checks the path token and Twilio's signature
(HMAC-SHA1 over the public URL + sorted parameters, TWILIO.md section 1),
wraps the form in a JSON envelope, publishes it to JetStream with
Nats-Msg-Id = MessageSid, waits for the stream's ack and answers empty TwiML.

Run by bench-ingress.sh as
  PEER_NATS_URL=... PEER_TOKEN=... PEER_AUTH_TOKEN=... PEER_PUBLIC_BASE=... \
  uvicorn --workers 2 --loop uvloop --http httptools --no-access-log peer:app
"""
import base64, hashlib, hmac, json, os, time
from urllib.parse import parse_qsl

import nats
from fastapi import FastAPI, Request, Response

TOKEN = os.environ["PEER_TOKEN"]
AUTH = os.environ["PEER_AUTH_TOKEN"].encode()
BASE = os.environ["PEER_PUBLIC_BASE"]
SUBJECT = "P.inbound.bench"
app = FastAPI()
state = {}


@app.on_event("startup")
async def connect():
    nc = await nats.connect(os.environ["PEER_NATS_URL"])
    js = nc.jetstream()
    # The stream ingress would make (DESIGN.md): work queue, file store,
    # 10-minute duplicate window. Both workers try; the second finds it.
    try:
        await js.add_stream(name="P_INBOUND", subjects=["P.inbound.>"], retention="workqueue",
                            storage="file", duplicate_window=600)
    except Exception:
        pass
    state["js"] = js


@app.post("/api/channels/sms/twilio/webhook/{token}")
async def webhook(token: str, request: Request):
    if not hmac.compare_digest(token, TOKEN):
        return Response(status_code=404)
    body = (await request.body()).decode()
    params = parse_qsl(body, keep_blank_values=True)
    signed = BASE + request.url.path + "".join(k + v for k, v in sorted(params))
    expected = base64.b64encode(hmac.new(AUTH, signed.encode(), hashlib.sha1).digest()).decode()
    if not hmac.compare_digest(expected, request.headers.get("x-twilio-signature", "")):
        return Response(status_code=403)
    fields = dict(params)
    envelope = {
        "v": 1, "channel_id": "bench", "message_sid": fields["MessageSid"],
        "from": fields["From"], "to": fields["To"], "body": fields.get("Body", ""),
        "received_at": time.time(), "params": params,
    }
    await state["js"].publish(SUBJECT, json.dumps(envelope).encode(),
                              headers={"Nats-Msg-Id": fields["MessageSid"]})
    return Response(content="<Response/>", media_type="text/xml")
