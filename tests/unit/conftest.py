"""tests/unit mirrors pipeline/'s folders; its test modules import `helpers` (this folder) by
name, which pytest finds because this conftest puts tests/unit on sys.path."""
