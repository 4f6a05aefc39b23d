"""The Recommend pipeline in parts: `values` (frozen values and the configuration), `guard`
(the one degradation policy), `selection` (pure filtering and cold-start scoring) and
`pipeline` (the orchestrator). Candidate sources are adapters of `ports.candidates`."""
