"""RabbitMQ for the spool and the outgoing queue shared by several nodes (conf/rabbitmq.properties).

:mod:`.config` reads the properties file; :mod:`.broker` holds the trio-facing connection
(confirmed publishes, manual acks, delayed redelivery), imported on its own so that reading
the configuration does not load aio-pika."""

from .config import RabbitMQConfig, load_rabbitmq

__all__ = ["RabbitMQConfig", "load_rabbitmq"]
