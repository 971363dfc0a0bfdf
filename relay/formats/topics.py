"""``--topic-template``: where a message goes, from its topic.

One syntax: ``{topic}`` stands for the message's topic (in Debezium mode the routing
value, Debezium's ``${routedByValue}``) and everything else is taken literally, so
``prod.{topic}`` sends topic ``orders`` to ``prod.orders``. There is no other
placeholder and no escaping: braces are not valid in a Kafka topic name, and a template
that holds any other brace is refused at startup rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER = "{topic}"
DEBEZIUM_DEFAULT_TEMPLATE = "outbox.event.{topic}"  # the router's route.topic.replacement
# Kafka topic names: letters, digits, '.', '_' and '-', at most 249 characters.
_KAFKA_LITERAL = re.compile(r"^[A-Za-z0-9._-]*$")
KAFKA_MAX_TOPIC = 249


def template_problems(template: str, *, kafka: bool) -> list[str]:
    """Every problem with ``template``, each as one plain sentence; ``kafka`` also checks
    that its literal text may appear in a Kafka topic name."""
    if not template:
        return ["The topic template is empty; leave --topic-template out to keep topics."]
    if "${" in template:
        return [
            f"The topic template {template!r} uses Debezium's ${{...}} syntax; write "
            f"{PLACEHOLDER} for the message's topic (Debezium's ${{routedByValue}})."
        ]
    literal = template.replace(PLACEHOLDER, "")
    if "{" in literal or "}" in literal:
        return [
            f"The topic template {template!r} has braces other than {PLACEHOLDER}, the only "
            "placeholder."
        ]
    if kafka and not _KAFKA_LITERAL.match(literal):
        return [
            f"The topic template {template!r} has characters Kafka does not allow in a topic "
            "name (letters, digits, '.', '_' and '-' only)."
        ]
    if kafka and len(literal) > KAFKA_MAX_TOPIC:
        return [f"The topic template is longer than Kafka's {KAFKA_MAX_TOPIC} characters."]
    return []


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A checked template (see ``template_problems``); ``render`` is a string join."""

    template: str

    def __post_init__(self) -> None:
        literal = self.template.replace(PLACEHOLDER, "")
        if not self.template or "{" in literal or "}" in literal or "${" in self.template:
            raise ValueError(f"not a valid topic template: {self.template!r}")

    @property
    def is_identity(self) -> bool:
        return self.template == PLACEHOLDER

    def render(self, topic: str) -> str:
        return self.template.replace(PLACEHOLDER, topic)
