"""MJML → HTML, once per part and template version: the compiler behind one function,
its output made smaller (``compact``) and marked with the email's language, and a
cache of results on disk (see pipeline/render.py, which calls it)."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import Problem, RenderError

log = logging.getLogger(__name__)

_PREFORMATTED = re.compile(r"(<(pre|textarea)\b.*?</\2>)", re.DOTALL | re.IGNORECASE)
_INDENT = re.compile(r"\n[ \t]+")


def compact(html: str) -> str:
    """Drop the indentation MJML writes on every line (about a sixth of an email), but
    never inside <pre> or <textarea>, where spaces are content. Smaller emails stay
    under Gmail's clipping size longer and cost less to send."""
    parts = _PREFORMATTED.split(html)
    # split() yields: text, whole element, tag name, text, …; only text is touched.
    out = []
    for index, part in enumerate(parts):
        kind = index % 3
        if kind == 0:
            out.append(_INDENT.sub("\n", part))
        elif kind == 1:
            out.append(part)
    return "".join(out)


def compile_mjml(
    source: str,
    *,
    template: str,
    template_dir: Path,
    locate: Callable[[str], tuple[str, int] | None] | None = None,
) -> str:
    """MJML → HTML; the compiler's exceptions become one RenderError naming the template
    (for an unknown element, the template file and line ``locate`` finds it at)."""
    from mjml import mjml_to_html  # imported late: it costs ~0.2 s and not every command needs it

    if not re.match(r"\s*(?:<!--.*?-->\s*)*<mjml[\s>]", source, re.DOTALL):
        # The compiler fails on such input with an internal error that helps nobody.
        message = (
            "not an MJML document: the rendered template must start with <mjml> "
            "(see the built-in email.mjml.j2)"
        )
        raise RenderError(Problem(template, None, message))
    try:
        result = mjml_to_html(source, template_dir=template_dir)
    except KeyError as exc:
        element = str(exc.args[0]) if exc.args else ""
        message = f"MJML could not compile the template: unknown MJML element <{element}>"
        found = locate(element) if locate is not None and element else None
        if found is not None:
            raise RenderError(Problem(found[0], found[1], message)) from None
    except AssertionError as exc:
        message = (
            f"MJML could not compile the template: unsupported input ({exc or 'assertion failed'})"
        )
    except Exception as exc:  # the compiler has no error hierarchy of its own
        message = f"MJML could not compile the template: {type(exc).__name__}: {exc}"
    else:
        if result.errors:
            raise RenderError(Problem(template, None, f"MJML: {result.errors[0]}"))
        return str(result.html)
    raise RenderError(Problem(template, None, message))


class MjmlCache:
    """Compiled HTML by hash of the MJML source: a later run reuses it when nothing changed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, key: str) -> str | None:
        try:
            return (self.directory / f"{key}.html").read_text(encoding="utf-8")
        except OSError:
            return None

    def put(self, key: str, html: str) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(html)
            os.replace(tmp, self.directory / f"{key}.html")
        except OSError as exc:  # a read-only workspace still renders, just slower
            log.warning("could not write the MJML cache in %s: %s", self.directory, exc)


_HTML_TAG = re.compile(r"<html\b[^>]*>", re.IGNORECASE)
_LANG_ATTRIBUTE = re.compile(r'\s(?:xml:)?lang="[^"]*"', re.IGNORECASE)
_WRAPPER_UNDETERMINED = re.compile(r'(<div\b[^>]*\brole="article"[^>]*?\s)lang="und"')


def set_language(html: str, language: str) -> str:
    """``html`` with its ``<html>`` tag saying ``language`` (a BCP 47 tag, already
    validated) in both ``lang`` (HTML) and ``xml:lang`` (XHTML, which MJML's doctype
    and namespaces announce): screen readers pick their voice from it. MJML writes
    ``lang="und"`` unless the template's ``<mjml lang>`` says otherwise; a template's
    own ``lang`` is kept, as the more specific choice."""
    found = _HTML_TAG.search(html)
    if found is None:
        return html
    tag = found.group(0)
    own = re.search(r'\slang="([^"]*)"', tag)
    if own is not None and own.group(1) not in ("", "und"):
        language = own.group(1)
    bare = _LANG_ATTRIBUTE.sub("", tag)
    marked = f'{bare[:5]} lang="{language}" xml:lang="{language}"{bare[5:]}'
    rest = html[found.end() :]
    # MJML repeats the template's lang (or "und") on the body's wrapper, which wins over
    # <html> for everything inside it.
    rest = _WRAPPER_UNDETERMINED.sub(rf'\g<1>lang="{language}"', rest, count=1)
    return html[: found.start()] + marked + rest
