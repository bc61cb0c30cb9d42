from tfedge.cli.main import main

main()
