"""Workers: supervised child processes, and the loop that feeds them tasks from the queue."""
