"""The engineers' workbench state: schedule versions, overrides, the audit log (SQLite)."""
