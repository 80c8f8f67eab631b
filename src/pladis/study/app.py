"""The study's web app: Starlette, server-rendered Jinja2 pages, no front-end build.

Pages: ``/`` start, ``/pair`` one pair with its prompt and questions, ``/thanks``; ``/results`` (admin token).
Evaluators are known by a secret token in an HttpOnly cookie (or their personal link ``/e/<token>``); images are
served only as ``/img/<opaque key>/<left|right>`` of the evaluator's own pairs, re-encoded without metadata.
"""

from __future__ import annotations

import base64
import hmac
import io
import secrets
from collections import OrderedDict
from pathlib import Path
from threading import Lock
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import service
from .db import Study

HERE = Path(__file__).parent
EVALUATOR_COOKIE = "pladis_study_evaluator"
CSRF_COOKIE = "pladis_study_csrf"
MAX_BODY_BYTES = 8 * 1024
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class BodyLimit:
    """Answers 413 to any request body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await PlainTextResponse("request too large", status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await PlainTextResponse("request too large", status_code=413)(scope, receive, send)


class _TooLarge(Exception):
    pass


class SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _ImageCache:
    """Re-encoded PNG bytes of recently served files (strips text chunks and EXIF that could name a config)."""

    def __init__(self, size: int = 256):
        self.size, self.items, self.lock = size, OrderedDict[str, bytes](), Lock()

    def get(self, path: str) -> bytes:
        with self.lock:
            if path in self.items:
                self.items.move_to_end(path)
                return self.items[path]
        from PIL import Image

        with Image.open(path) as image:
            image.load()
            clean = Image.new(image.mode, image.size)
            clean.paste(image)
            if clean.mode not in ("RGB", "RGBA", "L", "LA"):
                clean = clean.convert("RGB")
            buffer = io.BytesIO()
            clean.save(buffer, format="PNG")
        data = buffer.getvalue()
        with self.lock:
            self.items[path] = data
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return data


def create_app(
    engine: Engine,
    study_id: int,
    admin_token: str,
    *,
    secure_cookies: bool = False,
    title: str = "Image preference study",
) -> Starlette:
    """The ASGI app of one study stored in ``engine``'s database."""
    if len(admin_token) < 16:
        raise ValueError("the admin token must have at least 16 characters")
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False
    )
    images = _ImageCache()
    study: Study = service.find_study_by_id(engine, study_id)
    questions = [(key, service.QUESTIONS[key]) for key in study.questions.split(",")]

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        new_csrf = None
        if len(csrf) < 20:
            csrf = new_csrf = secrets.token_urlsafe(24)
        html = templates.get_template(name).render(title=title, csrf=csrf, **context)
        response = HTMLResponse(html, status_code=status)
        if new_csrf:
            response.set_cookie(CSRF_COOKIE, new_csrf, httponly=True, samesite="strict", secure=secure_cookies)
        return response

    def error(request: Request, message: str, status: int) -> HTMLResponse:
        return page(request, "error.html", status=status, message=message)

    async def form_checked(request: Request) -> dict[str, str] | Response:
        """The posted form, or an error response when the CSRF token or origin does not match."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return error(request, "cross-site form post refused", 403)
        form = await request.form(max_files=0, max_fields=20)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie.encode(), fields.get("csrf", "").encode()):
            return error(request, "the form expired; reload the page and answer again", 403)
        return fields

    def evaluator_token(request: Request) -> str | None:
        return request.cookies.get(EVALUATOR_COOKIE)

    def with_evaluator_cookie(response: Response, token: str) -> Response:
        response.set_cookie(
            EVALUATOR_COOKIE, token, max_age=60 * 60 * 24 * 180, httponly=True, samesite="lax", secure=secure_cookies
        )
        return response

    async def start_page(request: Request) -> Response:
        token = evaluator_token(request)
        if token:
            try:
                shown = await run_in_threadpool(service.next_pair, engine, study_id, token)
            except service.StudyError:
                shown = None
                token = None
            else:
                return RedirectResponse("/pair" if shown else "/thanks", status_code=303)
        return page(request, "start.html", questions=questions, pairs=study.pairs_per_evaluator)

    async def start(request: Request) -> Response:
        fields = await form_checked(request)
        if isinstance(fields, Response):
            return fields
        token = evaluator_token(request)
        if token:  # one participation per browser: a returning evaluator continues
            try:
                await run_in_threadpool(service.next_pair, engine, study_id, token)
                return RedirectResponse("/pair", status_code=303)
            except service.StudyError:
                pass
        token = await run_in_threadpool(service.start_evaluator, engine, study_id)
        return with_evaluator_cookie(RedirectResponse("/pair", status_code=303), token)

    async def personal_link(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            await run_in_threadpool(service.next_pair, engine, study_id, token)
        except service.StudyError as err:
            return error(request, str(err), err.status)
        return with_evaluator_cookie(RedirectResponse("/pair", status_code=303), token)

    async def pair_page(request: Request) -> Response:
        token = evaluator_token(request)
        if not token:
            return RedirectResponse("/", status_code=303)
        try:
            shown = await run_in_threadpool(service.next_pair, engine, study_id, token)
        except service.StudyError as err:
            return error(request, str(err), err.status)
        if shown is None:
            return RedirectResponse("/thanks", status_code=303)
        return page(
            request,
            "pair.html",
            shown=shown,
            questions=questions,
            allow_tie=study.allow_tie,
            personal_link=f"{request.base_url}e/{token}",
        )

    async def vote(request: Request) -> Response:
        fields = await form_checked(request)
        if isinstance(fields, Response):
            return fields
        answers = {key: fields.get(f"q_{key}", "") for key, _ in questions}
        try:
            await run_in_threadpool(
                service.record_vote, engine, study_id, evaluator_token(request), fields.get("pair", ""), answers
            )
        except service.StudyError as err:
            return error(request, str(err), err.status)
        return RedirectResponse("/pair", status_code=303)

    async def image(request: Request) -> Response:
        try:
            path = await run_in_threadpool(
                service.image_path,
                engine,
                study_id,
                evaluator_token(request),
                request.path_params["key"],
                request.path_params["side"],
            )
            data = await run_in_threadpool(images.get, path)
        except (service.StudyError, OSError):
            return PlainTextResponse("not found", status_code=404)
        return Response(data, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    async def thanks(request: Request) -> Response:
        return page(request, "thanks.html")

    def admin_ok(request: Request) -> bool:
        given = request.query_params.get("token", "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), admin_token.encode())

    async def results_page(request: Request) -> Response:
        if not admin_ok(request):
            return error(request, "the results need the admin token printed when the server started", 403)
        from . import results

        summary = await run_in_threadpool(results.summarise, engine, study_id)
        chart = await run_in_threadpool(results.chart_png, summary)
        return page(
            request,
            "results.html",
            summary=summary,
            chart=base64.b64encode(chart).decode("ascii"),
            token=request.query_params.get("token", ""),
        )

    async def results_csv(request: Request) -> Response:
        if not admin_ok(request):
            return PlainTextResponse("forbidden", status_code=403)
        from . import results

        kind = request.path_params["kind"]
        if kind not in ("votes", "summary"):
            return PlainTextResponse("not found", status_code=404)
        if kind == "votes":
            text = await run_in_threadpool(results.votes_csv, engine, study_id)
        else:
            summary = await run_in_threadpool(results.summarise, engine, study_id)
            text = results.summary_csv(summary)
        return Response(
            text,
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="{kind}.csv"'},
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("not found", status_code=404)

    routes = [
        Route("/", start_page),
        Route("/start", start, methods=["POST"]),
        Route("/e/{token}", personal_link),
        Route("/pair", pair_page),
        Route("/vote", vote, methods=["POST"]),
        Route("/img/{key}/{side}", image),
        Route("/thanks", thanks),
        Route("/results", results_page),
        Route("/results/{kind:str}.csv", results_csv),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)
    return app
