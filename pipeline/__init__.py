"""series: Markdown series in, drip emails out."""

from .check import CheckReport, check_workspace
from .config import Config, find_workspace, load_config
from .content import Article, Series, load_series
from .errors import ConfigError, ContentError, Problem, RenderError, SeriesError, UsageError
from .render import CompiledEmail, Personal, RenderedEmail, Renderer

__all__ = [
    "Article",
    "CheckReport",
    "CompiledEmail",
    "Config",
    "ConfigError",
    "ContentError",
    "Personal",
    "Problem",
    "RenderError",
    "RenderedEmail",
    "Renderer",
    "Series",
    "SeriesError",
    "UsageError",
    "check_workspace",
    "find_workspace",
    "load_config",
    "load_series",
]
