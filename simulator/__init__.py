"""The capacity simulator: replays a request trace against a deployment (README, "Capacity simulator")."""
