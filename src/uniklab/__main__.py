from uniklab.cli.main import entry

entry()
