"""A local AWS IoT JITP endpoint: registry, template engine, mutual-TLS MQTT server."""
