"""The cert factory: CAs, subject profiles, device certificates and the fleet store."""
