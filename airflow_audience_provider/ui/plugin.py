"""The Airflow plugin of the Audiences view, registered through the ``airflow.plugins`` entry point.

Every Airflow process loads plugins, so this module only declares them: the FastAPI app
(``airflow_audience_provider.ui.app``) is imported and built on the first request the API
server routes to ``/audiences``; the scheduler, workers and DAG processor never import it.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/audiences"


class LazyAudiencesApp:
    """An ASGI app that imports and builds the real FastAPI app on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            # FastAPI and the app: on the first request, not at plugin load
            from airflow_audience_provider.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class AudiencesPlugin(AirflowPlugin):
    """Adds "Audiences" to the Airflow UI's navigation: every audience object our tasks touched."""

    name = "audiences"
    fastapi_apps = [{"app": LazyAudiencesApp(), "url_prefix": URL_PREFIX, "name": "Audiences"}]
    external_views = [
        {
            "name": "Audiences",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "audiences",
            "icon": f"{URL_PREFIX}/icon.svg",
        }
    ]
