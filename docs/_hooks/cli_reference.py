"""mkdocs hook: replace ``<!-- rlavr-cli-reference -->`` in a page with a reference generated from the Typer app.

Generated at build time from ``rlavr.cli.app`` (the click objects Typer builds), so the CLI page lists every
command and option that exists, including commands other modules add later.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- rlavr-cli-reference -->"


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _type_name(p: Any) -> str:
    """A readable type for a Typer/click parameter (Typer >= 0.20 vendors its own click: duck-typed here)."""
    if getattr(p, "is_flag", False):
        return "flag"
    desc = getattr(p, "type_descriptor", None)
    ann = getattr(desc, "annotation", None)
    if ann is not None:
        return _cell(getattr(ann, "__name__", ann))
    t = getattr(p, "type", None)
    return _cell(getattr(t, "name", t) if t is not None else "")


def _params_table(cmd: Any) -> list[str]:
    rows = []
    for p in cmd.params:
        if getattr(p, "param_type_name", "option") == "argument":
            rows.append(f"| `{_cell(p.name).upper()}` (argument) | {_type_name(p)} | "
                        f"{'required' if p.required else _cell(p.default)} | {_cell(getattr(p, 'help', '') or '')} |")
            continue
        opts = ", ".join(f"`{o}`" for o in [*p.opts, *getattr(p, "secondary_opts", [])])
        default = "" if p.default is None or callable(p.default) else f"`{_cell(p.default)}`"
        rows.append(f"| {opts} | {_type_name(p)} | {'required' if p.required else default} | "
                    f"{_cell(getattr(p, 'help', '') or '')} |")
    if not rows:
        return ["No options besides `--help`."]
    return ["| option | type | default | meaning |", "|---|---|---|---|", *rows]


def cli_reference() -> str:
    import typer.main

    from rlavr.cli import app

    root = typer.main.get_command(app)
    root_ctx = root.context_class(root, info_name="rlavr")
    out = ["## Global options", "", *_params_table(root), ""]

    def add(group: Any, parent_ctx: Any, prefix: str) -> None:
        for name, cmd in sorted(getattr(group, "commands", {}).items()):
            ctx = cmd.context_class(cmd, info_name=name, parent=parent_ctx)
            out.extend([f"## {prefix} {name}", "", _cell(cmd.help or cmd.short_help or ""), "", "```text",
                        cmd.get_usage(ctx), "```", "", *_params_table(cmd), ""])
            add(cmd, ctx, f"{prefix} {name}")  # a command group (``rlavr ledger``): its subcommands follow

    add(root, root_ctx, "rlavr")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
