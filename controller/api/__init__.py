"""The HTTP API and the engineers' page (FastAPI, served from the controller's own loop)."""
