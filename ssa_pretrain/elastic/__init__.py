"""Elastic Attention: a router that picks full or sparse attention per kv head, and the tasks it learns on."""
