"""What a message looks like on the wire beyond its payload: the topic template, the
CloudEvents envelope, and the header names the relay itself sets (docs/formats.md)."""
