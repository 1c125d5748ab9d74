"""sepme engine: the library behind the `sepme` CLI (never imports typer or rich)."""

__version__ = "0.1.0"
