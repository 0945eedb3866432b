"""The `billing` command (commands.py), its terminal tables and progress lines."""
