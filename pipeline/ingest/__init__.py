"""Records into the input topic: `billing publish`, the topics, the embedded broker, Kafka's
security settings."""
