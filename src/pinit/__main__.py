from pinit.cli import main

main()
