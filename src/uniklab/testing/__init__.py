"""Testing with unikernels: the pytest plugin, session ownership, and `uniklab test`."""
