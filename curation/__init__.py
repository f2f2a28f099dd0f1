"""Operators: pure functions over Polars frames. They never open the workdir and hold no global state."""
