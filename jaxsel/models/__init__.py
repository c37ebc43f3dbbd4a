"""Llama-family decoder with a switchable attention policy and a Hugging Face checkpoint loader."""
