from engine.cli.quick import main

# a running daemon gets the command line before the CLI is imported (engine.cli.quick)
raise SystemExit(main())
