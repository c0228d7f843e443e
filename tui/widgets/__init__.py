"""Widgets of the console, grouped by the screen area they belong to."""
