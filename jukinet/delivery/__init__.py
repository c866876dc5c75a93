"""The delivery of identity notifications: outbox, pusher, receiver, store and rules."""
