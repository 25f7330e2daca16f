"""RabbitMQ for the spool and the outgoing queue shared by several nodes (conf/rabbitmq.properties)."""
