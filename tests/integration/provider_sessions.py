"""Provider sessions for the ChildHost tests; built by name in the provider child process."""

from __future__ import annotations

import os
import signal
import threading
from typing import ClassVar

from qtask.errors import RemoteRejectedError


class EchoSession:
    """Answers, fails, dies or waits for a partner call, as a test asks."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting
        self._meeting = threading.Barrier(2)

    def hello(self, name: str) -> str:
        return f"{self.greeting}, {name}"

    def pid(self) -> int:
        return os.getpid()

    def refuse(self, why: str) -> None:
        raise RemoteRejectedError(why)

    def break_down(self) -> None:
        raise KeyError("not a qtask error")

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def meet(self) -> bool:
        """True once a second call arrives while this one waits: calls run side by side."""
        self._meeting.wait(timeout=30)
        return True


def fake_braket_clients() -> object:
    """Braket and S3 clients whose quantum tasks complete at once with every qubit 1 (built in
    the provider child by the Braket backend's `clients_path`)."""
    import io
    import json

    from qtask.execution.remote_braket import BraketClients

    class Braket:
        tasks: ClassVar[dict[str, int]] = {}

        def create_quantum_task(self, **request: object) -> dict[str, str]:
            arn = f"arn:aws:braket:us-east-1:123456789012:quantum-task/{request['clientToken']}"
            qubits = str(request["action"]).count("measure")
            self.tasks[arn] = qubits
            return {"quantumTaskArn": arn}

        def get_quantum_task(self, quantumTaskArn: str) -> dict[str, str]:  # noqa: N803
            name = quantumTaskArn.rsplit("/", 1)[1]
            return {"status": "COMPLETED", "outputS3Bucket": "b", "outputS3Directory": name}

    class S3:
        def get_object(self, Bucket: str, Key: str) -> dict[str, object]:  # noqa: N803
            qubits = Braket.tasks[
                f"arn:aws:braket:us-east-1:123456789012:quantum-task/{Key.split('/')[0]}"
            ]
            document = {"measuredQubits": list(range(qubits)), "measurements": [[1] * qubits] * 5}
            return {"Body": io.BytesIO(json.dumps(document).encode())}

    return BraketClients(braket=Braket(), s3=S3())
