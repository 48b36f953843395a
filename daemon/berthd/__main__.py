from berthd.main import main

raise SystemExit(main())
