from robustcaps.cli import main

main()
