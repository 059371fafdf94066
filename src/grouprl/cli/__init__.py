"""Floor 7: the ``grouprl`` command."""

from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
