"""Tracing, metrics, errors (Sentry), logging, and the one wrapper every background task runs in."""
