from streamcache.cli import main

raise SystemExit(main())
