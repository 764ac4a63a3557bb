from pinit.cli import entry_point

entry_point()
