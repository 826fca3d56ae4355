"""What the three services share: settings, logging, telemetry, the database, the inbox,
the outbox and its relay, dead-lettering, the référentiel and the batch pipeline.

A service is a `ServiceSpec` (its topics, its state rules, its store); `build_app` turns it
into a runnable FastStream ASGI application.
"""
