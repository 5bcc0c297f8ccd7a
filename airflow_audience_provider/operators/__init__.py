"""Operators: thin layers that take the user's arguments, call the hook, push ids and links early."""
