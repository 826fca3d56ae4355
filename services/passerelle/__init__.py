"""The passerelle: partners' declarations over HTTP (CONTRACTS.md, Identity), checked like the
services check them, bound to the authenticated declarant, written to Kafka before answering."""
