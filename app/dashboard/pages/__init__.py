"""One module per dashboard page: its GET views and the forms it posts."""
