from hallugraph.cli import main

raise SystemExit(main())
