"""Shards: writing them once (``foundation shard``) and streaming them into training."""
