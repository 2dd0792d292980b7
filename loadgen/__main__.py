from loadgen.cli.app import main

main()
