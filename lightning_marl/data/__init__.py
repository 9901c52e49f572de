"""Data: the batch contract (schema), datasets on disk (dataset), replay buffers (datamodule), importers."""
