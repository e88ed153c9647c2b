from initlab.app.cli import main

main()
