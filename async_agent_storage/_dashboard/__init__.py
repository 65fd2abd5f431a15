"""`aas dashboard`: a read-only web view of a store (the ``dashboard`` extra: Starlette, Jinja2,
uvicorn). `create_app(store)` is the ASGI app; the command line serves it."""

from .app import create_app

__all__ = ["create_app"]
