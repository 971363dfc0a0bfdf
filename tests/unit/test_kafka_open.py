"""A new Kafka producer asks for the cluster's metadata until a broker of the cluster
answers, so that librdkafka asks for the idempotent producer's id at once
(connectors.kafka._ProducerSession.hear_from_the_cluster)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from confluent_kafka import KafkaError, KafkaException

from connectors import kafka
from connectors.kafka import CLUSTER_ANSWERS, _ProducerSession


class AnsweringProducer:
    """list_topics() answers from these broker ids in turn, the last one from then on
    (an exception: raised)."""

    def __init__(self, *answers: int | Exception) -> None:
        self._answers = list(answers)
        self.timeouts: list[float] = []

    def list_topics(self, *, timeout: float) -> SimpleNamespace:
        self.timeouts.append(timeout)
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(orig_broker_id=answer)


def session_over(producer: AnsweringProducer) -> _ProducerSession:
    """A session over ``producer``, without a librdkafka producer or a report thread."""
    session = _ProducerSession.__new__(_ProducerSession)
    session.producer = producer  # type: ignore[assignment]
    session._stopping = threading.Event()
    return session


def down() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, "no broker answered"))


def test_a_bootstrap_answer_is_followed_by_one_from_the_cluster() -> None:
    producer = AnsweringProducer(-1, 111)
    assert session_over(producer).hear_from_the_cluster() == 111
    assert len(producer.timeouts) == 2


def test_an_answer_from_the_cluster_at_once_is_enough() -> None:
    producer = AnsweringProducer(3)
    assert session_over(producer).hear_from_the_cluster() == 3
    assert len(producer.timeouts) == 1


def test_only_bootstrap_answers_stop_after_a_few() -> None:
    producer = AnsweringProducer(-1)
    assert session_over(producer).hear_from_the_cluster() == -1
    assert len(producer.timeouts) == CLUSTER_ANSWERS


def test_no_answer_gives_up_within_the_wait_and_each_try_is_short(monkeypatch) -> None:
    """While nothing answers the report thread serves no reports: it stops asking."""
    monkeypatch.setattr(kafka, "CLUSTER_WAIT", 0.05)
    producer = AnsweringProducer(down())
    assert session_over(producer).hear_from_the_cluster() == -1
    assert producer.timeouts and all(0 < t <= kafka._POLL_INTERVAL for t in producer.timeouts)


def test_a_stopping_session_does_not_ask() -> None:
    producer = AnsweringProducer(-1)
    session = session_over(producer)
    session._stopping.set()
    assert session.hear_from_the_cluster() == -1
    assert producer.timeouts == []


def test_a_request_that_fails_at_once_is_not_repeated_in_a_tight_loop(monkeypatch) -> None:
    monkeypatch.setattr(kafka, "CLUSTER_WAIT", 0.3)
    producer = AnsweringProducer(down())  # raises at once, not after its timeout
    assert session_over(producer).hear_from_the_cluster() == -1
    assert len(producer.timeouts) <= 4  # one a try's timeout (0.1 s), not thousands
