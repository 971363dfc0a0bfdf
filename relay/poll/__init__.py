"""Polling mode: bucket leases, claim lanes, wake-ups and retention of the outbox table."""
