"""series: Markdown series in, drip emails out.

The public API is loaded on first use, so that `series send` on a quiet hour does
not pay for the Markdown, MJML and template machinery it will not need.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CheckReport": "check",
    "check_workspace": "check",
    "Config": "config",
    "find_workspace": "config",
    "load_config": "config",
    "Article": "content",
    "Series": "content",
    "load_series": "content",
    "ConfigError": "errors",
    "ContentError": "errors",
    "Problem": "errors",
    "RenderError": "errors",
    "MessageBuildError": "errors",
    "SeriesError": "errors",
    "UsageError": "errors",
    "CompiledEmail": "render",
    "Personal": "render",
    "RenderedEmail": "render",
    "Renderer": "render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
