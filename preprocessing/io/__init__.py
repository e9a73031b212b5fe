"""Shared file utilities: errors, atomic writes, NIfTI, tables, JSON, console."""
