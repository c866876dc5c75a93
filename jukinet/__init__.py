"""The core library every node and tool shares: identifiers, PKI, config, storage, errors."""
