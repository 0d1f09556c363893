from clipqueue.cli import main

main()
