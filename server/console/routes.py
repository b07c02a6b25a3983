"""The console's routes: its pages (templates) and static files under /ui, each with a
strict Content-Security-Policy (no inline script, nothing from another origin), no
framing and no MIME sniffing."""

from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HERE = Path(__file__).parent
PAGES = {
    "generate": "Generate",
    "edit": "Edit",
    "gallery": "Gallery",
    "operator": "Operator",
    "signin": "Sign in",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:;"
    " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]

templates = Jinja2Templates(directory=str(HERE / "templates"))


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in HEADERS if name not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


async def page(request: Request) -> Response:
    name = request.path_params.get("page", "generate")
    if name not in PAGES:
        return templates.TemplateResponse(
            request, "missing.html", {"title": "Not found", "page": ""}, status_code=404
        )
    return templates.TemplateResponse(request, f"{name}.html", {"title": PAGES[name], "page": name})


async def image_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "image.html", {"title": "Image", "page": "image"})


async def home(request: Request) -> Response:
    return RedirectResponse("/ui/generate", status_code=307)


CONSOLE_ROUTES = [
    Route("/ui", home, methods=["GET"]),
    Mount(
        "/ui",
        routes=[
            Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
            Route("/image/{request_id}", image_page, methods=["GET"]),
            Route("/{page}", page, methods=["GET"]),
        ],
        middleware=[Middleware(SecurityHeaders)],
    ),
]
