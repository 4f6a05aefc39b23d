"""Backups of one deployment and their restore (`recsys backup`, docs/backup.md).

A backup is a folder (or an fsspec prefix) holding the verified index snapshots, the model
repository, the release manifests, the neighbour store, a portable SQL dump of the metadata and
interactions, and an export of the feature store, listed with their SHA-256 in `manifest.json`,
written last. `create` builds one, `verify` checks it, `restore` brings an empty deployment back
and validates it.
"""
