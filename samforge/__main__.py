from samforge.cli.main import main

raise SystemExit(main())
