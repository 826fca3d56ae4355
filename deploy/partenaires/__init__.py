"""Adapters for partners' own tools: what they already run, turned into contract events."""
