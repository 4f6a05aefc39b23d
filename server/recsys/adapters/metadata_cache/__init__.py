"""Item metadata held in the serving process, over any MetadataRepository."""
