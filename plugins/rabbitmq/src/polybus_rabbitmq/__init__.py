"""RabbitMQ backend of polybus, on aio-pika."""

from polybus_rabbitmq.backend import (
    CAPABILITIES,
    CAPABILITIES_WITHOUT_TOPIC_LOG,
    RabbitMQBackend,
)
from polybus_rabbitmq.errors import MessageReturnedError, QueueArgumentsMismatchError
from polybus_rabbitmq.settings import RabbitMQSettings

__all__ = [
    "CAPABILITIES",
    "CAPABILITIES_WITHOUT_TOPIC_LOG",
    "MessageReturnedError",
    "QueueArgumentsMismatchError",
    "RabbitMQBackend",
    "RabbitMQSettings",
]
