"""Vendor rules without I/O: what hooks send and operators decide, one module per vendor.

A hook module is an HTTP client (one method per endpoint); the pure logic both it and the
operators need (bulk-result mapping, definition diffs, time arithmetic) lives here, cheap to
import and testable without a server.
"""
