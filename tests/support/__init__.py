"""Shared test helpers, test oracles and the demo world."""
