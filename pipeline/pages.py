"""The pages `series serve` shows: one small, self-contained HTML page per answer."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config


@dataclass(frozen=True)
class Answer:
    """What to tell the person (a page) or the mailbox provider (``text``)."""

    status: int
    title: str
    text: str
    choices: tuple[tuple[str, str], ...] = ()  # (scope, button label), first is the main one


PAGE_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f5f6f8;color:#1d2330;
font:1.0625rem/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:34rem;margin:0 auto;padding:2.5rem 1.25rem}
.site{margin:0 0 1.5rem;font-size:.95rem;color:#4a5468}
h1{margin:0 0 1rem;font-size:1.5rem;line-height:1.25;overflow-wrap:anywhere}
p{margin:0 0 1rem;overflow-wrap:anywhere}
fieldset{margin:1.5rem 0;padding:0;border:0;display:grid;gap:.75rem}
legend{padding:0;margin-bottom:.75rem;font-weight:600}
button{width:100%;min-height:2.75rem;padding:.75rem 1rem;border-radius:.5rem;
border:2px solid #1c4f9c;background:#1c4f9c;color:#fff;font:inherit;font-weight:600;
cursor:pointer;overflow-wrap:anywhere}
button.other{background:#fff;color:#1c4f9c}
button:focus-visible{outline:3px solid #e3a100;outline-offset:2px}
a{color:#1c4f9c}
"""


def render_page(answer: Answer, config: Config) -> str:
    """A small self-contained page: heading, explanation, and the choices as buttons."""
    esc = html.escape
    form = ""
    if answer.choices:
        # The first choice is the main button; any other is drawn in outline.
        looks = ["main"] + ["other"] * (len(answer.choices) - 1)
        buttons = "\n".join(
            f'<button type="submit" name="scope" value="{scope}" id="scope-{scope}" '
            f'class="{look}">{esc(label)}</button>'
            for look, (scope, label) in zip(looks, answer.choices, strict=True)
        )
        form = (
            '<form method="post"><fieldset>\n<legend>What would you like to stop?</legend>\n'
            f"{buttons}\n</fieldset></form>\n"
        )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(answer.title)} · {esc(config.site_name)}</title>\n"
        f"<style>{PAGE_CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<p class="site"><a href="{esc(config.site_url)}">{esc(config.site_name)}</a></p>\n'
        f"<h1>{esc(answer.title)}</h1>\n<p>{esc(answer.text)}</p>\n{form}"
        "</main>\n</body>\n</html>\n"
    )
