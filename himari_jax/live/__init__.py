"""Paper trading: the decision for the bar that just closed, bar sources and the ledger that
survives restarts."""
