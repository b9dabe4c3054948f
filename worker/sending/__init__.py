"""Sending: the message state machine, the delivery service, shared protections, transports."""
