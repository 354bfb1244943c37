"""The operator's web dashboard at /dashboard: a face over `app/admin/ops.py` (README.md,
"Dashboard"). Off, like the admin API, while SMMGW_ADMIN_TOKEN is unset."""
