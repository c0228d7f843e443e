"""The engines behind backend.engine.Engine: `docker` (docker.py) today; `swarm` to come."""
