from mambaic.cli.main import main

raise SystemExit(main())
