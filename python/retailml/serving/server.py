"""Run the API: Flask's development server or gunicorn with :file:`gunicorn.conf.py`."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

from ..config import Settings

GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")


def gunicorn_options(
    settings: Settings, *, workers: int | None = None, threads: int | None = None
) -> dict[str, Any]:
    """The settings of ``gunicorn.conf.py`` with bind (and workers/threads) from arguments."""
    namespace = runpy.run_path(str(GUNICORN_CONF))
    options = {k: v for k, v in namespace.items() if not k.startswith("_")}
    options["bind"] = [f"{settings.api_host}:{settings.api_port}"]
    if workers is not None:
        options["workers"] = workers
    if threads is not None:
        options["threads"] = threads
    return options


def serve(
    settings: Settings,
    *,
    production: bool = False,
    workers: int | None = None,
    threads: int | None = None,
) -> None:
    """Serve until interrupted: Flask's threaded server, or gunicorn with ``production``."""
    from .app import create_app

    if not production:
        app = create_app(settings)
        app.run(host=settings.api_host, port=settings.api_port, threaded=True, debug=False)
        return

    from gunicorn.app.base import BaseApplication

    options = gunicorn_options(settings, workers=workers, threads=threads)

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings and value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(settings)

    _Gunicorn().run()
