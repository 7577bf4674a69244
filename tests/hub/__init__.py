"""Tests of the adapterkit hub (server, client, stock Hugging Face clients)."""
