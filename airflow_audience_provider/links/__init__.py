"""Extra links to the vendor's web pages, persisted as URLs at execute time."""
