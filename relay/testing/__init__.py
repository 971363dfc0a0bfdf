"""What connector authors use to test their connectors against the relay's contract."""
