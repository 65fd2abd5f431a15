"""The dashboard: a Starlette app over an open store, read-only.

Pages (all GET; any other method is 405): ``/`` the overview (`activity()`), ``/sessions`` the
listing (`list_sessions`, `count_sessions`), ``/sessions/{id}`` one session (`read`). The app
holds only the store's reading methods (`_Reads`), so no code path here can write.

Safety: every value is HTML-escaped by the templates (Jinja autoescape); the pages carry no
script and a Content-Security-Policy that forbids any; with a token, every request needs it (an
``Authorization: Bearer`` header, or the cookie a ``?token=`` link sets), else 401.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import InvalidInputError, StorageError
from ..models import Activity, Session, SessionPage
from ..protocol import SessionStore
from .chart import entity_label, layout
from .conversation import pretty_json, run_view

__all__ = ["COOKIE", "create_app"]

COOKIE: Final = "aas_dashboard_token"
PAGE_SIZE: Final = 25
MAX_PAGE_SIZE: Final = 200
RUNS_STEP: Final = 20
SESSION_TYPES: Final = ("agent", "team", "workflow")
_AGE = re.compile(r"(\d+)\s*(m|h|d|w)", re.IGNORECASE)
_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# No script, no frame, nothing from elsewhere: the pages need their stylesheet and nothing else.
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class _Reads:
    """The store's reading calls: all the app can reach."""

    read: Callable[..., Awaitable[Session | None]]
    list_sessions: Callable[..., Awaitable[SessionPage]]
    count_sessions: Callable[..., Awaitable[int]]
    activity: Callable[..., Awaitable[Activity]]


class _BadRequest(Exception):
    pass


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _entity(session: Session) -> str:
    return session.agent_id or session.team_id or session.workflow_id or ""


def _name(session: Session) -> str:
    name = session.session_data.get("session_name")
    return name if isinstance(name, str) else ""


def session_url(session_id: str) -> str:
    """The page of a session: its id as one path segment, whatever characters it holds."""
    return "/sessions/" + quote(session_id, safe="")


def _since(text: str, now: datetime) -> datetime:
    """``since``: an age (30m, 12h, 7d, 2w) or an ISO date or time (UTC unless it has an
    offset)."""
    age = _AGE.fullmatch(text)
    if age:
        return now - timedelta(**{_UNITS[age.group(2).lower()]: int(age.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _BadRequest(
            f"since {text!r}: expected an age such as 30m, 12h, 7d, 2w or an ISO date or time "
            "(2026-11-01, 2026-11-01T12:00:00+01:00)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _int(value: str | None, default: int, low: int, high: int, what: str) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise _BadRequest(f"{what} must be a whole number from {low} to {high}")
    return int(value)


class _TokenCheck(BaseHTTPMiddleware):
    """Every request shows the token: ``Authorization: Bearer <token>``, the cookie, or a
    ``?token=`` link (then answered with the cookie and a redirect to the same page without
    the token in its address)."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self._token = token.encode()

    def _valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        offered = request.query_params.get("token")
        if offered is not None:
            if not self._valid(offered):
                return _unauthorized(request)
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                COOKIE, offered, httponly=True, samesite="strict", path="/", secure=False
            )
            return response
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
        if self._valid(bearer) or self._valid(request.cookies.get(COOKIE)):
            return await call_next(request)
        return _unauthorized(request)


class _SafetyHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _templates() -> Environment:
    environment = Environment(
        loader=PackageLoader("async_agent_storage._dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = _when
    environment.filters["num"] = "{:,}".format
    environment.filters["entity_label"] = entity_label
    environment.globals["urlencode"] = urlencode
    environment.globals["session_url"] = session_url
    return environment


_PAGES = _templates()


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_PAGES.get_template(template).render(**context), status_code=status)


def _unauthorized(request: Request) -> Response:
    response = _page(
        "message.html",
        401,
        title="Dashboard",
        heading="Unauthorized",
        message=(
            "This dashboard needs its access token: open the link `aas dashboard` printed, "
            "or send an Authorization: Bearer header."
        ),
    )
    response.headers["WWW-Authenticate"] = "Bearer"
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def create_app(
    store: SessionStore, *, token: str | None = None, title: str = "Sessions"
) -> Starlette:
    """The dashboard over `store`, which the caller opens before serving and closes after.
    With `token`, every request must show it (see `_TokenCheck`)."""
    reads = _Reads(store.read, store.list_sessions, store.count_sessions, store.activity)
    label = str(getattr(store, "label", type(store).__name__))

    def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return _page(template, status, title=title, store_label=label, **context)

    async def overview(request: Request) -> Response:
        bucket = request.query_params.get("bucket", "hour")
        if bucket not in ("hour", "day"):
            raise _BadRequest("bucket must be 'hour' or 'day'")
        activity = await reads.activity(bucket=bucket)
        return render(
            "overview.html",
            activity=activity,
            chart=layout(activity),
            page="overview",
        )

    async def sessions(request: Request) -> Response:
        params = request.query_params
        search = (params.get("id") or "").strip()
        if search:
            found = await reads.read(search, last_runs=0)
            if found is not None:
                return RedirectResponse(session_url(found.session_id), status_code=303)
        filters = {
            key: (params.get(key) or "").strip() for key in ("user", "agent", "type", "since")
        }
        if filters["type"] and filters["type"] not in SESSION_TYPES:
            raise _BadRequest(f"type must be one of {', '.join(SESSION_TYPES)}")
        limit = _int(params.get("limit"), PAGE_SIZE, 1, MAX_PAGE_SIZE, "limit")
        since = _since(filters["since"], datetime.now(UTC)) if filters["since"] else None
        query: dict[str, Any] = {
            "user_id": filters["user"] or None,
            "entity_id": filters["agent"] or None,
            "session_type": filters["type"] or None,
            "updated_after": since,
        }
        cursor = params.get("cursor") or None
        page = await reads.list_sessions(**query, limit=limit, cursor=cursor)
        total = await reads.count_sessions(**query)
        kept = {k: v for k, v in filters.items() if v}
        if limit != PAGE_SIZE:
            kept["limit"] = str(limit)
        return render(
            "sessions.html",
            page="sessions",
            sessions=[
                {
                    "id": s.session_id,
                    "name": _name(s),
                    "type": s.session_type,
                    "user": s.user_id or "",
                    "entity": _entity(s),
                    "runs": s.run_count,
                    "updated": s.updated_at,
                }
                for s in page.items
            ],
            filters=filters,
            total=total,
            first_page=None if cursor is None else "?" + urlencode(kept),
            next_page=(
                None
                if page.next_cursor is None
                else "?" + urlencode({**kept, "cursor": page.next_cursor})
            ),
            not_found=search or None,
            types=SESSION_TYPES,
        )

    async def session(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        wanted = request.query_params.get("runs")
        last = None if wanted == "all" else _int(wanted, RUNS_STEP, 0, 1_000_000, "runs")
        found = await reads.read(session_id, last_runs=last)
        if found is None:
            return render(
                "message.html", 404, heading="No such session",
                message=f"There is no session {session_id!r} in this store.",
            )  # fmt: skip
        runs = [
            run_view(found.runs_offset + i, run_id, run)
            for i, (run, run_id) in enumerate(zip(found.runs, found.run_ids, strict=False))
        ]
        others = {
            name: pretty_json(value)
            for name in ("metadata", "summary", "agent_data", "team_data", "workflow_data")
            if (value := getattr(found, name)) is not None
        }
        shown = len(found.runs)
        return render(
            "session.html",
            page="session",
            session=found,
            entity=_entity(found),
            name=_name(found),
            state=pretty_json(found.session_data),
            others=others,
            runs=runs,
            older=found.runs_offset,
            more_runs=None if found.runs_offset == 0 else shown + RUNS_STEP,
        )

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return render("message.html", 400, heading="Bad request", message=str(exc))

    async def store_error(request: Request, exc: Exception) -> Response:
        status = 400 if isinstance(exc, InvalidInputError) else 503
        heading = "Bad request" if status == 400 else "The store did not answer"
        return render("message.html", status, heading=heading, message=str(exc))

    middleware = [Middleware(_SafetyHeaders)]
    if token is not None:
        if not token:
            raise ValueError("token must not be empty")
        middleware.append(Middleware(_TokenCheck, token=token))
    return Starlette(
        routes=[
            Route("/", overview, methods=["GET"], name="overview"),
            Route("/sessions", sessions, methods=["GET"], name="sessions"),
            Route("/sessions/{session_id:path}", session, methods=["GET"], name="session"),
            Route("/favicon.ico", no_icon, methods=["GET"]),
            Mount(
                "/static",
                StaticFiles(packages=[("async_agent_storage._dashboard", "static")]),
                name="static",
            ),
        ],
        middleware=middleware,
        exception_handlers={_BadRequest: bad_request, StorageError: store_error},
    )
