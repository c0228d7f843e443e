"""The engines behind backend.engine.Engine: `docker` (docker.py) and `swarm` (swarm.py)."""
