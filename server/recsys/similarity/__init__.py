"""Item-to-item similarity: the neighbour store (EASE^R or co-occurrence) built by
`recsys train` and served by the neighbours candidate source."""
