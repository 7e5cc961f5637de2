"""A trace span per HTTP request: the root of the request's trace (or a child of the caller's
`traceparent`), current while every backend call is made. Installed only when tracing is on."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.tracing import server_span


class TracingMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        with server_span(f"{scope['method']} {scope['path']}", headers) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, send_traced)
            # Named after the route, not the path (serving ids would make every name unique).
            route = scope.get("route")
            if route is not None:
                span.update_name(f"{scope['method']} {route.path}")
