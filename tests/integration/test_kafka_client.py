"""`./dev kafka`: the partner's client, against the real broker (as a process, like a partner runs it)."""

import json
import os
import subprocess
from pathlib import Path

import contracts as c

ROOT = Path(__file__).resolve().parents[2]


def dev_kafka(bootstrap: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "dev"), "kafka", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        check=False,
    )


def test_produce_then_consume_with_headers(kafka, topic_prefix):
    topic = topic_prefix + c.EQUIPEMENT
    value = {"specversion": "1.0", "id": "x-1", "note": "é"}
    sent = dev_kafka(
        kafka.bootstrap_servers, "produce", topic, "--key", "0350003N", "-H", "traceparent=abc", stdin=json.dumps(value)
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith(f"{topic} partition ")

    read = dev_kafka(kafka.bootstrap_servers, "consume", topic, "--from-beginning", "--max", "1", "--idle", "20")
    assert read.returncode == 0, read.stderr
    assert read.stdout, read.stderr
    (line,) = read.stdout.splitlines()
    record = json.loads(line)
    assert record["key"] == "0350003N"
    assert record["value"] == value
    assert record["headers"] == [["content-type", c.CONTENT_TYPE], ["traceparent", "abc"]]


def test_one_record_per_line_and_idle_stop(kafka, topic_prefix):
    topic = topic_prefix + c.FORMATION
    sent = dev_kafka(kafka.bootstrap_servers, "produce", topic, "--key", "k", "--lines", stdin='{"a":1}\n\n{"a":2}\n')
    assert sent.returncode == 0, sent.stderr
    assert len(sent.stdout.splitlines()) == 2
    # Idle counted from the start: the first fetch (assignment, TLS) may take seconds on a busy machine.
    read = dev_kafka(kafka.bootstrap_servers, "consume", topic, "--from-beginning", "--idle", "10")
    assert read.returncode == 0, read.stderr
    assert sorted(json.loads(line)["value"]["a"] for line in read.stdout.splitlines()) == [1, 2]


def test_clear_errors(kafka, unique):
    missing = dev_kafka(kafka.bootstrap_servers, "produce", f"absent-{unique}", "--key", "k", stdin="{}")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"./dev kafka: topic 'absent-{unique}' does not exist on {kafka.bootstrap_servers}"
    empty = dev_kafka(kafka.bootstrap_servers, "produce", f"absent-{unique}", stdin="  \n")
    assert (empty.returncode, empty.stderr.strip()) == (2, "./dev kafka: nothing to send: standard input is empty")
    bad_header = dev_kafka(kafka.bootstrap_servers, "produce", "t", "-H", "novalue", stdin="{}")
    assert bad_header.returncode == 2 and "NAME=VALUE" in bad_header.stderr
    nobody = dev_kafka("127.0.0.1:1", "consume", "t", "--idle", "1")
    assert nobody.returncode == 1
    assert "no Kafka broker answers at 127.0.0.1:1 (KAFKA_BOOTSTRAP_SERVERS)" in nobody.stderr


def test_max_stops_at_n_records_across_partitions(kafka, topic_prefix):
    topic = topic_prefix + c.CATALOGUE
    for key in ("a", "b", "c", "d"):  # over several partitions
        assert dev_kafka(kafka.bootstrap_servers, "produce", topic, "--key", key, stdin="{}").returncode == 0
    read = dev_kafka(kafka.bootstrap_servers, "consume", topic, "--from-beginning", "--max", "3", "--idle", "20")
    assert read.returncode == 0, read.stderr
    assert len(read.stdout.splitlines()) == 3
