"""Deployers put a rendered values document to work: local processes, or a Helm release."""
