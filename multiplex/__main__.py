from multiplex.cli import main

raise SystemExit(main())
