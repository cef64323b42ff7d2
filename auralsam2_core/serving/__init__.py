"""Reaching a model: the one engine interface (the model in this process, or the shared service
through its HTTP client) and the service's wire format."""
