from ociassemble.cli import main

main()
