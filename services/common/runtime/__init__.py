"""How a service runs: its spec, the app that composes consumer, health and lifecycle, start-up
and supervision, settings, logging, tracing and secret masking."""
