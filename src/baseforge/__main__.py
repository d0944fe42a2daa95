from baseforge.cli import main

raise SystemExit(main())
