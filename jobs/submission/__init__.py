"""Submitting facetrain commands to a running Ray cluster through its Jobs API.

`auth` finds the cluster token the way Ray's own clients do, `command_line` turns parsed
arguments back into the command a job runs, `runtime_env` says what ships with the job, and
`client` talks to the head (submit, follow, status, stop).
"""
