"""`series serve`: the self-hosted unsubscribe pages (built in pipeline/web.py) and the
signup form with double opt-in (pipeline/signup_web.py)."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import click

from .errors import SeriesError

if TYPE_CHECKING:
    from types import FrameType

    from .cli import State
    from .signup_config import SignupConfig


def serve_command(state: State, *, host: str, port: int, force: bool = False) -> None:
    """Serve until Ctrl-C, with waitress; one line says where."""
    import waitress

    from .cli_subscribers import warn_upgrade_refused
    from .store import open_store
    from .web import make_app

    config = state.config
    with open_store(config.root, content_free=True) as store:
        warn_upgrade_refused(store)
        app = make_app(config, store, force=force)
        for warning in app.warnings:
            click.echo(f"Warning: {warning}", err=True)
        try:
            server = waitress.create_server(
                app, host=host, port=port, ident="series", **proxy_options(config.signup)
            )
        except OSError as exc:
            raise SeriesError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        shown = f"[{host}]" if ":" in host else host
        # A name such as localhost may give one socket per address: no single port then.
        bound = getattr(server, "effective_port", port)
        pages = "unsubscribe pages" + (" and signup form" if app.signup is not None else "")
        click.echo(f"Serving {pages} on http://{shown}:{bound}/ (Ctrl-C to stop)")
        # waitress ends its loop quietly on Ctrl-C; a service manager's SIGTERM is
        # made to do the same, so both stop the server cleanly.
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.close()
        click.echo("Stopped.")


def proxy_options(signup: SignupConfig) -> dict[str, object]:
    """waitress's options for ``[signup] trusted_proxies`` = N (waitress 3 docs,
    "Arguments": trusted_proxy, trusted_proxy_count, trusted_proxy_headers).

    Without them waitress deletes X-Forwarded-For before the app sees it
    (clear_untrusted_proxy_headers is on by default), and every request seems to come
    from the proxy. With N > 0 the connecting peer, whatever its address, is taken
    for the nearest proxy (so `series serve` must only be reachable through the
    proxies), and the client's address is the Nth X-Forwarded-For entry from the
    right: waitress sets REMOTE_ADDR to it and leaves the last N entries, from which
    the signup app reads the same address. With N = 0 the header is deleted."""
    if signup.trusted_proxies <= 0:
        return {}
    return {
        "trusted_proxy": "*",
        "trusted_proxy_count": signup.trusted_proxies,
        "trusted_proxy_headers": {"x-forwarded-for"},
    }


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
