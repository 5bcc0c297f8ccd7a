"""The Audiences view: an Airflow plugin (a FastAPI app in the API server and a navigation entry)."""
