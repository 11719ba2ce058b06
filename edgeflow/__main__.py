from edgeflow.cli import main

main()
