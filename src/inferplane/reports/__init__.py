"""Reports read from the ledger: `inferplane usage` and `inferplane invoice`."""
