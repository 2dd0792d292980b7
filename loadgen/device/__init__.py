"""One device's JITP life: connect, take the first rejection as the provisioning
trigger, back off, reconnect, act, disconnect; and the outcome it ends in."""
