"""Making and reading training records: synthetic pairs, real tracker outputs, shards, the grain loader."""
