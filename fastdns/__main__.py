from fastdns.cli import main

raise SystemExit(main())
