"""The national node: every resident's identity record, code pools, provisions."""
