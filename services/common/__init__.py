"""What the three services share, by room:

- `pipeline.py`: one batch of Kafka records in, one PostgreSQL transaction out (the heart);
- `rules/`: pure rules (who may declare what, latest time wins);
- `storage/`: PostgreSQL (pool and migrations, inbox, latest-wins upserts, the référentiel's
  table, derived records last published, retention); `migrations/`: the shared tables;
- `messaging/`: Kafka (the batch consumer, the outbox and its relay, dead letters, the
  `./dev outbox` command);
- `runtime/`: how a service runs (its `ServiceSpec`, `build_app`, health, start-up and
  supervision, settings, logging, tracing, secret masking).
"""
