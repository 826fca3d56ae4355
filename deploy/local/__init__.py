"""Local runtime: real Apache Kafka and PostgreSQL processes for the demo and the tests.

`kafka/` and `postgres.py` run the two servers on `server_process.py`, `processes.py` the three
services (`children.py`: none outlives the runtime); `platform.py` puts them together on fixed
ports with their data in one directory (`datadir.py`), Kafka and database kept in step
(`pairing.py`); `__main__.py` is `./dev up` and `./dev demo`, `demo.py` and `scenario.py` the
demo's story, `console.py` what they print.
"""
