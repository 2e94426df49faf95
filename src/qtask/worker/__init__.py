"""Workers: the loop that takes tasks from the queue and runs them in supervised child processes
(`runner`), and the submission of remote-backend tasks to their provider (`remote`).

They work on the domain's ports, given by process assembly; no adapter and nothing of the API
is imported here (import contracts). The child processes are the shared runtime's pool.
"""
