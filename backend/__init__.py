"""hyperservice's backend: the UI-free core (models, API, reconciler, Docker driver, balancer, store).

Nothing under backend/ imports textual; the console reaches the backend only through its HTTP API.
"""
