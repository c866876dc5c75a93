"""The agency gateway: the only door for national agencies into the national node."""
