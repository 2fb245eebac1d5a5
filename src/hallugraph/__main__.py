from hallugraph.cli import entry

entry()
