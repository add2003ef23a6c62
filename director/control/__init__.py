"""The daemon's control socket: messages, wire protocol and the trio server."""
