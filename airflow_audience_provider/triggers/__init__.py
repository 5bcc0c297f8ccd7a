"""Deferrable waits: one polling base, one small trigger per vendor."""
