"""Widgets of the create form: a field row, list and key=value editors."""
