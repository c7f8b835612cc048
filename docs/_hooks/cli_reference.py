"""mkdocs hook: replace ``<!-- rlavr-cli-reference -->`` in a page with a reference generated from the Typer app.

Generated at build time from ``rlavr.cli.app`` (the click objects Typer builds), so the CLI page lists every
command and option that exists, including commands other modules add later.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- rlavr-cli-reference -->"


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _params_table(cmd: Any) -> list[str]:
    import click

    rows = []
    for p in cmd.params:
        if isinstance(p, click.Argument):
            rows.append(f"| `{p.human_readable_name}` (argument) | {_cell(p.type.name)} | "
                        f"{'required' if p.required else _cell(p.default)} | |")
            continue
        opts = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        default = "" if p.default is None or callable(p.default) else f"`{_cell(p.default)}`"
        kind = "flag" if getattr(p, "is_flag", False) else _cell(p.type.name)
        rows.append(f"| {opts} | {kind} | {'required' if p.required else default} | {_cell(p.help or '')} |")
    if not rows:
        return ["No options besides `--help`."]
    return ["| option | type | default | meaning |", "|---|---|---|---|", *rows]


def cli_reference() -> str:
    import click
    import typer.main

    from rlavr.cli import app

    root = typer.main.get_command(app)
    root_ctx = click.Context(root, info_name="rlavr")
    out = ["## Global options", "", *_params_table(root), ""]
    for name, cmd in sorted(getattr(root, "commands", {}).items()):
        ctx = click.Context(cmd, info_name=name, parent=root_ctx)
        out += [f"## rlavr {name}", "", _cell(cmd.help or cmd.short_help or ""), "", "```text",
                cmd.get_usage(ctx), "```", "", *_params_table(cmd), ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
