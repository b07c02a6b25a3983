"""Outbound network rules shared by the API, the jobs and the providers: which URLs and
addresses the server may send requests to (below all three, importing none of them)."""
