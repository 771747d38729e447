"""facetrain on a Ray cluster: the job entrypoints (`prep`, `train`, `eval`) that run there,
and submission from a workstation (`client` talks to the head, `auth` finds its token the way
Ray's own clients do, `runtime_env` says what ships with the job)."""
