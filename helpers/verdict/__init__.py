"""What a reviewer reads at the end of a run: the sign-off rule (one, for every output), the
failure phase and its advice, and the `next:` command that moves forward. Data-layer helpers:
they read recorded runs and the catalog, never start anything."""
