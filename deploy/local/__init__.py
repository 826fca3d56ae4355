"""Local runtime: real Apache Kafka and PostgreSQL processes for the demo and the tests.

Nothing is re-exported here so that `python -m deploy.local.kafka` does not
import its own module twice.
"""
