"""hyperservice's console: a Textual app that talks to the backend's HTTP API through httpx."""
