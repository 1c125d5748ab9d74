from sepme_cli.app import main

main()
