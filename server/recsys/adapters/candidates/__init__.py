"""Candidate sources (the `CandidateSource` port) over the other ports."""
