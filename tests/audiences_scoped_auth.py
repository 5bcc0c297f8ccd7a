"""A real auth manager for the Audiences view's permission test: Airflow's simple auth manager,
except that the user ``lytics_only`` may read no DAG but ``example_lytics_segment_refresh``.

Loaded by the API code through ``AIRFLOW__CORE__AUTH_MANAGER=audiences_scoped_auth.ScopedAuthManager``.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

READABLE = {"lytics_only": {"example_lytics_segment_refresh"}}


class ScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        scope = READABLE.get(user.username)
        if scope is not None and (details is None or details.id not in scope):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
