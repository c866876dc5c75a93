"""Requests between municipalities, relayed by the prefectures and the national node.

- :mod:`~jukinet.relay.seal`: pure: the signed and sealed body of a request or
  an answer, and the checks of its signer.
- :mod:`~jukinet.relay.header`: pure: the envelope's header and its checks.
- :mod:`~jukinet.relay.directory`: pure: the directory the national node signs,
  read from its administered file, and its verification.
- :mod:`~jukinet.relay.store`: SQL: the tables a relaying node keeps (the
  directory held, the answers given).
- :mod:`~jukinet.relay.node`: a node's relay: the directory it keeps fresh, the
  hop checks of each tier, the forwarding and its log entries.
- :mod:`~jukinet.relay.endpoint`: a municipality's two ends: the
  :class:`~jukinet.relay.endpoint.RelayClient` that sends and the handlers that
  answer.
"""
