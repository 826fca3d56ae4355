"""A real, single-node Apache Kafka broker for the demo and the test suite.

`jars` fetches the broker from Maven Central once, `broker` runs it (`LocalKafka`),
`readiness` tells when clients can use it; `python -m deploy.local.kafka` runs it alone.
Topics are not created here: see `deploy.topology` and `deploy.topic_admin`.
"""

from deploy.local.kafka.broker import LocalKafka
from deploy.local.kafka.jars import KAFKA_VERSION, KafkaRuntimeError, cache_root

__all__ = ["KAFKA_VERSION", "KafkaRuntimeError", "LocalKafka", "cache_root"]
