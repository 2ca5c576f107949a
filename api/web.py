"""Server-rendered pages: Jinja2 templates shipped in the package, the session cookie, forms.

Pages carry a strict Content-Security-Policy (`default-src 'self'`, no inline script or style,
never framed). The session cookie is `HttpOnly`, `SameSite=Strict`, `Path=/` and, except in
development mode on loopback, `Secure` with the `__Host-` prefix (so no subdomain can plant or
widen it). Forms are small url-encoded bodies; a repeated field is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from security.config import Settings

PAGE_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
MAX_FORM_BYTES = 8_192

_templates = Environment(loader=PackageLoader("api", "templates"),
                         autoescape=select_autoescape(default=True), auto_reload=False)


def cookie_name(settings: Settings) -> str:
    return "__Host-enclave-session" if settings.cookie_secure else "enclave-session"


def session_cookie(request: Request, settings: Settings) -> str | None:
    return request.cookies.get(cookie_name(settings))


@dataclass
class Page:
    """What a sign-in handler answers, before it becomes a Starlette response."""

    status: int = 200
    template: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    location: str | None = None
    #: A new session-cookie secret to set, or "" to clear the cookie.
    cookie: str | None = None


def render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(**context)


def respond(page: Page, settings: Settings) -> Response:
    response: Response
    if page.location is not None:
        response = RedirectResponse(page.location, status_code=page.status)
    else:
        response = HTMLResponse(render(page.template or "message.html", **page.context),
                                status_code=page.status)
        response.headers["content-security-policy"] = PAGE_CSP
    if page.cookie == "":
        response.delete_cookie(cookie_name(settings), path="/", secure=settings.cookie_secure,
                               httponly=True, samesite="strict")
    elif page.cookie is not None:
        response.set_cookie(cookie_name(settings), page.cookie, path="/",
                            secure=settings.cookie_secure, httponly=True, samesite="strict")
    return response


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is (or declares itself) over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


def is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() \
        == "application/x-www-form-urlencoded"


def parse_form(body: bytes) -> dict[str, str] | None:
    """Url-encoded fields, or None when the body is not UTF-8 or repeats a field."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return None
    form = dict(pairs)
    return form if len(form) == len(pairs) else None


async def read_form(request: Request) -> dict[str, str] | None:
    """The url-encoded form, or None if it is too big, not a form, or repeats a field."""
    if not is_form(request):
        return None
    body = await read_body(request, MAX_FORM_BYTES)
    return None if body is None else parse_form(body)


async def form_or_refusal(request: Request, settings: Settings) -> dict[str, str] | Response:
    """The form, or the page that refuses it."""
    form = await read_form(request)
    if form is None:
        return respond(message("Form refused", "Send a small url-encoded form, each field once."),
                       settings)
    return form


def single_params(query: str) -> dict[str, str] | None:
    """Query parameters, or None if one repeats (RFC 6749 §3.1)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)
    return params if len(params) == len(pairs) else None


def message(title: str, text: str, *, status: int = 400, **extra: Any) -> Page:
    return Page(status=status, template="message.html",
                context={"title": title, "text": text, **extra})
