"""Local runtime: real Apache Kafka and PostgreSQL processes for the demo and the tests.

`kafka/` and `postgres.py` run the two servers on `server_process.py`, `processes.py` the three
services; `__main__.py` is `./dev up` and `./dev demo`, `scenario.py` the demo's story.
"""
