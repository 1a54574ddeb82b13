"""`keel codec-server`: Temporal's codec-server protocol over Keel's encryption codec, so the
Web UI and the `temporal` CLI show encrypted payloads decrypted (keel/_encryption.py).

    POST /decode  {"payloads": [<Payload as proto JSON>, ...]}  -> the same, decrypted
    POST /encode  the same, encrypted

Whoever can POST here reads every task's data, so a request needs the token (`Authorization:
Bearer <token>`) unless the server runs with --no-auth on a loopback address, must name this
server in its Host header (DNS rebinding), and a browser may call it only from the Web UI's
origin (CORS).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from keel._encryption import AesGcmCodec, EncryptionError
from keel._ports import host_headers

ALLOWED_HEADERS = "content-type, x-namespace, authorization"
MAX_BODY_BYTES = 8 * 1024 * 1024  # a page of the UI's history; more is no UI's request


def codec_app(
    codec: AesGcmCodec,
    *,
    host: str,
    port: int,
    ui_origins: Sequence[str],
    token: str | None,
) -> Starlette:
    hosts = set(host_headers(host, port))
    expected = f"Bearer {token}".encode() if token else None

    def cors(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or origin not in ui_origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Vary": "Origin",
        }

    def refusal(request: Request) -> Response | None:
        if request.headers.get("host") not in hosts:
            return JSONResponse({"error": "this server is not that host"}, 421)
        origin = request.headers.get("origin")
        if origin is not None and origin not in ui_origins:
            return JSONResponse({"error": f"origin {origin} may not use this server"}, 403)
        given = request.headers.get("authorization", "").encode()
        if expected is not None and not hmac.compare_digest(given, expected):
            return JSONResponse({"error": "missing or wrong bearer token"}, 401, cors(request))
        return None

    async def preflight(request: Request) -> Response:
        if request.headers.get("host") not in hosts:
            return JSONResponse({"error": "this server is not that host"}, 421)
        return Response(status_code=204, headers=cors(request))

    def endpoint(encrypt: bool):  # type: ignore[no-untyped-def]
        async def handle(request: Request) -> Response:
            refused = refusal(request)
            if refused is not None:
                return refused
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"error": "request body too large"}, 413, cors(request))
            try:
                payloads = json_format.Parse(body, Payloads())
                done = [
                    codec.encrypt(p) if encrypt else codec.decrypt(p) for p in payloads.payloads
                ]
            except (json_format.ParseError, UnicodeDecodeError):
                return JSONResponse({"error": "the body is not Payloads JSON"}, 400, cors(request))
            except EncryptionError as err:
                return JSONResponse({"error": str(err)}, 400, cors(request))
            answer = json_format.MessageToJson(Payloads(payloads=done))
            return Response(answer, media_type="application/json", headers=cors(request))

        return handle

    return Starlette(
        routes=[
            Route("/encode", endpoint(True), methods=["POST"]),
            Route("/decode", endpoint(False), methods=["POST"]),
            Route("/encode", preflight, methods=["OPTIONS"]),
            Route("/decode", preflight, methods=["OPTIONS"]),
        ]
    )
