"""The write path on Kafka: interaction and deletion events as protobufs (`codec`), the
idempotent producer (`EventProducer`, the library producer other services can use), topic
administration and the broker probe (`admin`), the consumer worker (`consumer`, `recsys serve
consume`) and a local Tansu broker for tests and `recsys up` (`broker`).

Importing this package imports no Kafka client: `producer`, `admin` and `consumer` load
confluent-kafka when they are imported."""
