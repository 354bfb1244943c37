"""The operator's interface over HTTP: `/admin/…`, bearer `SMMGW_ADMIN_TOKEN`, off when unset.

`schemas` holds what operators see and send, `ops` the operations (shared with the CLI),
`router` the HTTP face. Import the router from `app.admin.router`.
"""
