"""Data: any source (world split, hub id, local file) into normalised records, then token ids and batches."""
