"""Extra links persisted at execute time (the Google marketing-platform ``persist()`` pattern).

An operator calls ``AudienceLink.persist()`` as soon as the vendor object exists, so a task
that fails later still links to what it touched. ``get_link`` only reads XCom: it needs no
connection and no network at render time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey


class AudienceLink(BaseOperatorLink):
    """A link whose URL an operator stored in XCom under ``key``."""

    name: ClassVar[str]
    key: ClassVar[str]

    @classmethod
    def persist(cls, context: Context, url: str | None) -> None:
        if url:
            context["ti"].xcom_push(key=cls.key, value=url)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value: Any = XCom.get_value(key=self.key, ti_key=ti_key)
        return str(value) if value else ""
