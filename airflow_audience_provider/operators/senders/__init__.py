"""Engine adapters: each vendor's :class:`~airflow_audience_provider.identifiers.sync.ChunkSender`,
which turns the contact-list engine's chunks into that vendor's hook calls."""
