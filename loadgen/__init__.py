"""jitp-loadgen: load tester for AWS IoT Just-in-Time Provisioning."""

__version__ = "0.1.0"
