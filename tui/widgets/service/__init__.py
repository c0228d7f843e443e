"""Widgets of the service view: the replicas table and the log pane."""
