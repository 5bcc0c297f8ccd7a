"""Vendor hooks: endpoint -> method maps and vendor states -> our statuses, on the shared core."""
