"""The emulator's AWS IoT control plane: the REST-JSON API boto3's ``iot``
client speaks, on the same registry as the MQTT side."""
