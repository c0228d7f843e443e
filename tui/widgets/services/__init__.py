"""Widgets of the services view."""
