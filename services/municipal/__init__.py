"""The municipal node: one municipality's resident register and its outbox."""
