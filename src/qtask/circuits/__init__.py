"""Circuit ingestion: detect the OpenQASM version, check what a circuit may do, parse it once.

Small, natively readable circuits are parsed inline; anything else in a child process of the
runtime's pool (`parse_child`) with a deadline, so a slow or hostile circuit never stalls the
API's event loop. Not here: stores, queues, backends or HTTP.
"""
