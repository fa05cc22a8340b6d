"""data_channel."""
