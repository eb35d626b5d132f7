"""Offline training CLIs. They import `models/`; nothing in `app/` imports them."""
