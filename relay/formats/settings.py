"""Settings of the wire format: ``--topic-template``, ``--envelope``,
``--cloudevents-source`` and ``--cloudevents-mode``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.formats.cloudevents import BINARY, MODES
from relay.formats.topics import DEBEZIUM_DEFAULT_TEMPLATE, template_problems

ENVELOPE_NONE = "none"
ENVELOPE_CLOUDEVENTS = "cloudevents"
ENVELOPES = (ENVELOPE_NONE, ENVELOPE_CLOUDEVENTS)
# A URI-reference (RFC 3986): its characters, at least one. Whether it is a well-formed
# URI is the writer's business; what is refused here is what no URI can hold (spaces,
# quotes, control characters, non-ASCII).
_URI_REFERENCE = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")


@dataclass(frozen=True)
class FormatSettings:
    """``topic_template`` None keeps topics as they are (in Debezium mode:
    ``outbox.event.{topic}``, the router's default). ``envelope`` ``cloudevents`` wraps
    each message as a CloudEvent from ``cloudevents_source`` in ``cloudevents_mode``
    (``binary`` when None)."""

    topic_template: str | None = None
    envelope: str = ENVELOPE_NONE
    cloudevents_source: str | None = None
    cloudevents_mode: str | None = None

    def template_for(self, *, debezium: bool) -> str | None:
        """The template in effect, None when topics stay as they are."""
        if self.topic_template is not None:
            return self.topic_template
        return DEBEZIUM_DEFAULT_TEMPLATE if debezium else None

    @property
    def mode(self) -> str:
        return self.cloudevents_mode or BINARY

    def problems(self, *, connector: str) -> list[str]:
        """Every problem, each as one plain sentence."""
        found: list[str] = []
        if self.topic_template is not None:
            found.extend(template_problems(self.topic_template, kafka=connector == "kafka"))
        if self.envelope not in ENVELOPES:
            found.append(f"The envelope {self.envelope!r} is unknown; choose one of: "
                         f"{', '.join(ENVELOPES)}.")
        elif self.envelope == ENVELOPE_CLOUDEVENTS:
            found.extend(self._cloudevents_problems())
        elif self.cloudevents_source is not None or self.cloudevents_mode is not None:
            found.append("--cloudevents-source and --cloudevents-mode need "
                         "--envelope cloudevents.")
        return found

    def _cloudevents_problems(self) -> list[str]:
        found: list[str] = []
        if not self.cloudevents_source:
            found.append("--envelope cloudevents needs --cloudevents-source, a URI naming "
                         "where the events come from (for example /billing or "
                         "https://example.com/billing).")
        elif not _URI_REFERENCE.match(self.cloudevents_source):
            found.append(f"The CloudEvents source {self.cloudevents_source!r} is not a URI "
                         "reference (no spaces, quotes or non-ASCII characters; "
                         "percent-encode them).")
        if self.mode not in MODES:
            found.append(f"The CloudEvents mode {self.mode!r} is unknown; choose one of: "
                         f"{', '.join(MODES)}.")
        return found
