"""What the server runtime and the client SDK both need, below both: the error model and its wire
form, the service catalog, the context of the call being served (caller, deadline) and reading
`HIS_*` settings. Imports nothing of `his.runtime`, `his_client` or any service (docs/adr/0003)."""
