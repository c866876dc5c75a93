"""The prefecture node: its municipalities' identity records, relayed upward."""
