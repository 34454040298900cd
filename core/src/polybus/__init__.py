"""polybus: one async event bus over Kafka, Redpanda, Redis, RabbitMQ and memory.

The backend is chosen by configuration (``POLYBUS_BACKEND``) and found among the
installed plugins; the same code and the same delivery semantics run on each::

    from polybus import EventMessage, create_event_bus

    async with create_event_bus() as bus:
        await bus.subscribe_to_topic("orders", handle, group_id="billing")
        await bus.publish_event("orders", EventMessage("orders", b'{"id": 1}'))
"""

from polybus.backend import (
    Backend,
    BackendSpec,
    Capabilities,
    CompressedPublishResult,
    Delivery,
    DeliverySink,
    OutboundRecord,
    StoredRecord,
    Stream,
)
from polybus.bus import EventBus
from polybus.codecs import CODEC_HEADER
from polybus.dlq import DeadLetterQueue
from polybus.errors import (
    BackendUnavailableError,
    BusClosedError,
    CodecUnavailableError,
    ConfigurationError,
    DeadLetterNotFoundError,
    DeadLetterPayloadOmittedError,
    DuplicateBackendError,
    InvalidHandlerError,
    InvalidMessageError,
    InvalidTopicNameError,
    MessageAlreadySettledError,
    MessageNotDeliveredError,
    MessageRejectedError,
    MessageTooLargeError,
    PluginLoadError,
    PolybusError,
    SerializationError,
    SubscriptionNotFoundError,
    TopicNotFoundError,
    UnknownBackendError,
    UnsupportedOperationError,
)
from polybus.factory import create_backend_settings, create_event_bus
from polybus.hookspecs import hookimpl
from polybus.message import EventMessage
from polybus.partitioner import murmur2, partition_for_key
from polybus.protocols import (
    ProtocolDLQHandler,
    ProtocolEventBus,
    ProtocolEventBusInMemory,
    ProtocolEventBusService,
    ProtocolEventHandler,
    ProtocolEventMessage,
    ProtocolEventPublisher,
    ProtocolKafkaAdapter,
    ProtocolRedpandaAdapter,
    ProtocolSchemaRegistry,
)
from polybus.publisher import EventPublisher
from polybus.registry import ENTRY_POINT_GROUP, InstalledBackend, Registry
from polybus.settings import BackendSettings, PolybusSettings
from polybus.types import ContextValue, LiteralEventBusBackend
from polybus.validation import validate_topic_name

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "CODEC_HEADER",
    "Backend",
    "BackendSettings",
    "BackendSpec",
    "BackendUnavailableError",
    "BusClosedError",
    "Capabilities",
    "CodecUnavailableError",
    "CompressedPublishResult",
    "ConfigurationError",
    "ContextValue",
    "DeadLetterNotFoundError",
    "DeadLetterPayloadOmittedError",
    "DeadLetterQueue",
    "Delivery",
    "DeliverySink",
    "DuplicateBackendError",
    "EventBus",
    "EventMessage",
    "EventPublisher",
    "InstalledBackend",
    "InvalidHandlerError",
    "InvalidMessageError",
    "InvalidTopicNameError",
    "LiteralEventBusBackend",
    "MessageAlreadySettledError",
    "MessageNotDeliveredError",
    "MessageRejectedError",
    "MessageTooLargeError",
    "OutboundRecord",
    "PluginLoadError",
    "PolybusError",
    "PolybusSettings",
    "ProtocolDLQHandler",
    "ProtocolEventBus",
    "ProtocolEventBusInMemory",
    "ProtocolEventBusService",
    "ProtocolEventHandler",
    "ProtocolEventMessage",
    "ProtocolEventPublisher",
    "ProtocolKafkaAdapter",
    "ProtocolRedpandaAdapter",
    "ProtocolSchemaRegistry",
    "Registry",
    "SerializationError",
    "StoredRecord",
    "Stream",
    "SubscriptionNotFoundError",
    "TopicNotFoundError",
    "UnknownBackendError",
    "UnsupportedOperationError",
    "create_backend_settings",
    "create_event_bus",
    "hookimpl",
    "murmur2",
    "partition_for_key",
    "validate_topic_name",
]
