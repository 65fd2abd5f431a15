"""The command line, ``aas`` (also installed as ``async-agent-storage``).

    aas status  --url sqlite:///data.db
    aas migrate --url postgresql://user@host/db --dry-run
    aas sessions ls --user alice
    aas export --format chat -o examples.jsonl

Needs the ``cli`` extra (typer and rich). ``aas --help`` lists every command.
"""

from __future__ import annotations

try:
    import rich  # noqa: F401
    import typer  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise SystemExit(
        "the command line needs the 'cli' extra: pip install 'async-agent-storage[cli]'"
    ) from exc

from ._cli.app import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
