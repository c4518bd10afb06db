"""Thin HTTP handlers: parse, call a service, commit, shape the response."""
