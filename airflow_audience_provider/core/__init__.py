"""The vendor-neutral spine: transport, auth, rate limits, typed errors, result shapes.

Every vendor hook is built on these modules; a vendor module maps endpoints to methods and
vendor states to our statuses, and never reimplements plumbing.
"""
