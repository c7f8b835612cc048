"""The ``rlavr`` command line (Typer): ``strategies``; ``bench``, ``replay`` and ``train`` are added by their modules."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="rlavr: label-budgeted acquisition strategies for GRPO (RLVR with active labels).")
console = Console()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level.")) -> None:
    """rlavr: label-budgeted acquisition strategies for GRPO."""
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])


@app.command("strategies")
def strategies_cmd() -> None:
    """List the registered acquisition strategies with one-line descriptions."""
    from rlavr.strategies import available

    table = Table(title="rlavr strategies", show_lines=False)
    table.add_column("name", style="bold cyan")
    table.add_column("-mask")
    table.add_column("needs")
    table.add_column("description")
    reg = available()
    for name, cls in reg.items():
        own = str(getattr(cls, "name", name)).lower()
        if name != own and reg.get(own) is cls:
            continue  # an alias of a strategy listed under its own name
        table.add_row(name, "yes" if getattr(cls, "supports_mask", False) else "",
                      ", ".join(sorted(getattr(cls, "requires", ()))), getattr(cls, "description", ""))
    # piped / captured output: one row per line (no wrapping at 80 columns), easy to grep
    out = console if console.is_terminal else Console(width=250)
    out.print(table)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
