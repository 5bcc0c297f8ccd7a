"""Sensors: poke once, then (when deferrable) hand the wait to the vendor's trigger."""
