"""`qtask node`: a service node of the mesh (FR-001, FR-005, FR-008 and execution).

A node is a MeshHost that
- advertises itself on ADVERT_TOPIC every `advert_interval_s` and at once when its fidelity,
  availability or slots in use change (adverts.AdvertPublisher);
- measures its fidelity with Bell and GHZ-3 runs under its own noise model at start and every
  `calibration_interval_s`, and publishes each measurement as a QualityReport(kind=fidelity);
- answers RESERVE from its event-sourced book (reservations.py), EXECUTE by running the
  fragment on Aer under its noise model in one of `capacity` child processes
  (qtask.runtime.pool: Aer holds the GIL for a whole run, so in a thread it would freeze the
  libp2p thread and the event loop), and PING with a Pong. EXECUTE with `input_state` /
  `return_state` runs the slice on the state it is given and returns the output state
  (qtask.mesh.handoff: statevectors on an ideal node, density matrices on a noisy one, wider
  than `max_*_qubits` refused `state_too_wide`);
- with `faults_enabled`, serves FAULT_PROTOCOL: latency, dropped requests and fidelity
  degradation injected in its own transport (qtask.mesh.faults), a test and experiment hook.

Its advert, calibration and reservation-expiry loops are supervised loops
(qtask.runtime.supervision): an error is logged and retried with backoff, the health port's
/ready names a loop that completed no pass in three of its intervals, and with
`[supervision] wedged_exit_s` the node exits 70 when a loop (or its event loop) stays stuck,
for its restart policy to replace it.

Every failure travels in the reply as an ErrorInfo with a stable code (ERROR_CODES), never as
a bare stream reset. SIGTERM: the node advertises DRAINING, refuses new work, lets running
fragments finish (up to `DRAIN_GRACE_S`), then stops. A SIGKILLed node takes its children
with it (they die with their parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from pydantic import BaseModel, ValidationError

from qtask.errors import ExecutionError, MeshPeerError, QTaskError
from qtask.logs import get_logger
from qtask.mesh import metrics
from qtask.mesh.adverts import AdvertPublisher
from qtask.mesh.config import NodeSettings
from qtask.mesh.faults import FaultLayer, effective_noise
from qtask.mesh.host import MeshHost
from qtask.mesh.node_child import Calibration, ChildRequest
from qtask.mesh.protocol import (
    ADVERT_TOPIC,
    EXECUTE_PROTOCOL,
    FAULT_PROTOCOL,
    PING_PROTOCOL,
    QUALITY_TOPIC,
    RESERVE_PROTOCOL,
    Advert,
    Availability,
    ErrorInfo,
    ExecuteReply,
    ExecuteRequest,
    FaultReply,
    FaultRequest,
    NoiseSpec,
    Ping,
    Pong,
    QualityReport,
    ReserveReply,
    ReserveRequest,
)
from qtask.mesh.reservations import ReservationBook
from qtask.runtime.health import serve_health
from qtask.runtime.pool import ChildPool, ChildTimeoutError
from qtask.runtime.signals import until_signalled
from qtask.runtime.supervision import SupervisedLoop, WedgeWatchdog, start_watchdog

log = get_logger("mesh.node")

# How long SIGTERM waits for running fragments before the node stops anyway.
DRAIN_GRACE_S = 30.0
# A fragment running longer than this is killed (its child replaced) and answered
# execution_failed; the coordinator's own execute_timeout_s is normally shorter.
FRAGMENT_TIMEOUT_S = 600.0
# Calibration runs Bell and GHZ-3 with a few thousand shots: well under a second.
CALIBRATION_TIMEOUT_S = 60.0
# Reservations whose window ended are released this often (FR-005: they release themselves).
EXPIRY_INTERVAL_S = 0.5
# The expiry loop is stale (/ready 503) after three of these without a completed pass: a
# lenient multiple of EXPIRY_INTERVAL_S, so a loaded event loop does not flap the node's /ready.
EXPIRY_STALE_INTERVAL_S = 1.0
# Changes to the advert (slots taken and freed) within this long go out as one advert: each
# advert costs every peer a signature check and the coordinator a database write, and a
# fragment changes it four times in ~30 ms (reserve, start, end, release).
CHANGE_COALESCE_S = 0.1
# The stable codes of a node's error replies, and when each is given.
ERROR_CODES = {
    "bad_request": "the request is not a valid message of the protocol",
    "draining": "the node is shutting down and takes no new work",
    "busy": "no free slot now for work without a reservation",
    "unsupported": "a feature this node does not offer",
    "state_too_wide": "a state hand-off wider than this node's cap (max_*_qubits)",
    "gate_not_offered": "the circuit uses gates outside the node's gate set",
    "qubits_out_of_range": "the circuit's qubits are outside the node's qubit range",
    "reservation_unknown": "no accepted reservation has this id (never made, released, expired)",
    "invalid_circuit": "the IR does not describe a circuit",
    "execution_failed": "Aer could not run the circuit",
    "internal_error": "a bug in the node; its log has the traceback",
}  # fmt: skip


class ServiceNode:
    """One service node: its host, book, calibration and running fragments."""

    def __init__(
        self,
        settings: NodeSettings,
        *,
        health_host: str = "127.0.0.1",
        wedged_exit_s: float = 0.0,
    ) -> None:
        """`wedged_exit_s`: [supervision] wedged_exit_s, the wedge watchdog's limit (0: off)."""
        self.settings = settings
        self.health_host = health_host
        self.wedged_exit_s = wedged_exit_s
        self.host = MeshHost(
            listen=settings.listen,
            bootstrap=settings.bootstrap,
            identity_file=settings.identity_file,
        )
        self.book = ReservationBook(settings.capacity)
        self.calibration: Calibration | None = None
        self.calibration_noise = settings.noise  # the noise the last calibration ran under
        self.running = 0
        # Reservations whose fragment runs now. A reservation is good for one run: the node
        # frees it when that run ends (a release that arrives during the run, from a cancelled
        # job, is acknowledged and takes effect then), so the coordinator's next fragment
        # here never races a release over the wire.
        self._running_reservations: set[str] = set()
        self.draining = False
        self._gates = frozenset(settings.gates)
        self._pool = ChildPool(
            settings.capacity,
            "qtask.mesh.noise:child_handle",
            init_path="qtask.mesh.noise:child_warm_up",
            preload=["qtask.mesh.noise"],
            # Idle OpenMP threads must not spin on cores other nodes share (FACTS.md).
            env={"OMP_WAIT_POLICY": "passive"},
        )
        self._health: asyncio.Server | None = None
        self._watchdog: WedgeWatchdog | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.publisher = AdvertPublisher(
            self.host.publish,
            self._advert,
            interval_s=settings.advert_interval_s,
            coalesce_s=CHANGE_COALESCE_S,
        )
        # The background loops, supervised like every role's: an error is logged and retried
        # with backoff, /ready names a loop that completed nothing in three of its intervals,
        # and the wedge watchdog ends a node whose loop (or event loop) stays stuck.
        self.loops = (
            SupervisedLoop(
                "mesh_adverts",
                self.publisher.turn,
                interval=settings.advert_interval_s + CHANGE_COALESCE_S,
            ),
            # A turn sleeps the interval, then calibrates (up to its timeout).
            SupervisedLoop(
                "mesh_calibration",
                self._calibration_turn,
                interval=settings.calibration_interval_s + CALIBRATION_TIMEOUT_S,
            ),
            SupervisedLoop(
                "mesh_expiry",
                self._expiry_turn,
                interval=EXPIRY_STALE_INTERVAL_S,
                pause=EXPIRY_INTERVAL_S,
            ),
        )
        # GossipSub forwards only topics a peer subscribes to: a node subscribes to both so
        # adverts and reports reach peers that joined the mesh through it.
        self.host.subscribe(ADVERT_TOPIC, _relay_only)
        self.host.subscribe(QUALITY_TOPIC, _relay_only)
        # The fault layer (qtask.mesh.faults) wraps every protocol but its own; with faults
        # off it is never set, so the wrapper costs one attribute read per request.
        self.faults = FaultLayer(seed=settings.fault_seed)
        if settings.faults is not None:
            self.faults.apply(settings.faults)
        self.host.handle(RESERVE_PROTOCOL, self.faults.wrap(self._on_reserve))
        self.host.handle(EXECUTE_PROTOCOL, self.faults.wrap(self._on_execute))
        self.host.handle(PING_PROTOCOL, self.faults.wrap(self._on_ping))
        if settings.faults_enabled:
            self.host.handle(FAULT_PROTOCOL, self._on_fault)
        self._fault_expiry: asyncio.Task[None] | None = None

    @property
    def noise(self) -> NoiseSpec:
        """The noise the node runs now: its configured noise plus any injected degradation."""
        return effective_noise(self.settings.noise, self.faults.extra_depolarizing)

    @property
    def peer_id(self) -> str:
        """This node's libp2p peer id (its node_id)."""
        return self.host.peer_id

    async def start(self) -> None:
        """Calibrate, start the host, advertise, and serve health when configured."""
        s = self.settings
        await self._pool.start()
        self.calibration = await self._calibrate()
        await self.host.start()
        await self._publish_quality()
        for loop in self.loops:
            loop.start()
        self._watchdog = start_watchdog(self.wedged_exit_s)
        health_port = None
        if s.health_port is not None:
            checks = {"mesh": self._ready_check, **{loop.name: loop.check() for loop in self.loops}}
            self._health = await serve_health(self.health_host, s.health_port, checks)
            health_port = self._health.sockets[0].getsockname()[1]
        log.info(
            "mesh_node_ready",
            peer_id=self.peer_id,
            addrs=list(self.host.addrs),
            fidelity=self.calibration.fidelity,
            capacity=s.capacity,
            gates=len(self._gates),
            qubit_range=[s.min_qubits, s.max_qubits],
            health_port=health_port,
        )

    async def stop(self, grace_s: float = DRAIN_GRACE_S) -> None:
        """Advertise DRAINING, let running fragments finish (up to `grace_s`), stop."""
        self.draining = True
        with contextlib.suppress(MeshPeerError):
            await self.publisher.publish_once("change")
        log.info("mesh_node_draining", running=self.running)
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning("mesh_node_drain_timeout", running=self.running, grace_s=grace_s)
        if self._watchdog is not None:
            await self._watchdog.stop()
        for loop in self.loops:
            await loop.stop()
        if self._fault_expiry is not None:
            self._fault_expiry.cancel()
            await asyncio.gather(self._fault_expiry, return_exceptions=True)
        if self._health is not None:
            self._health.close()
        await self.host.stop()
        await self._pool.close()
        log.info("mesh_node_stopped", peer_id=self.peer_id)

    # -- adverts and quality ------------------------------------------------------------------

    def in_use(self, now: float) -> int:
        """Slots taken now: running fragments or reserved windows, whichever is more."""
        return min(self.settings.capacity, max(self.running, self.book.in_use_at(now)))

    def _advert(self, seq: int, now: float) -> Advert:
        s = self.settings
        calibration = self.calibration
        assert calibration is not None
        in_use = self.in_use(now)
        if self.draining:
            availability = Availability.DRAINING
        elif in_use >= s.capacity:
            availability = Availability.BUSY
        else:
            availability = Availability.AVAILABLE
        return Advert(
            node_id=self.peer_id,
            service_type=s.service_type,
            gates=tuple(s.gates),
            qubit_range=(s.min_qubits, s.max_qubits),
            fidelity=calibration.fidelity,
            fidelity_measured_at=calibration.measured_at,
            noise=self.noise,
            availability=availability,
            capacity=s.capacity,
            in_use=in_use,
            addrs=self.host.addrs,
            timestamp=now,
            seq=seq,
        )

    async def _publish_quality(self) -> None:
        calibration = self.calibration
        assert calibration is not None
        report = QualityReport(
            kind="fidelity",
            reporter=self.peer_id,
            node_id=self.peer_id,
            fidelity=calibration.fidelity,
            measured_at=calibration.measured_at,
        )
        await self.host.publish(QUALITY_TOPIC, report.model_dump_json().encode())

    async def _child(self, request: ChildRequest, timeout: float) -> tuple[str, Any]:
        kind, value = await self._pool.call(request, timeout)
        return kind, value

    async def _calibrate(self) -> Calibration:
        s = self.settings
        noise = self.noise
        kind, value = await self._child(
            ("calibrate", (noise, s.calibration_shots)), CALIBRATION_TIMEOUT_S
        )
        if kind != "ok" or not isinstance(value, Calibration):
            raise ExecutionError(f"calibration failed: {value}")
        self.calibration_noise = noise
        return value

    async def _calibration_turn(self) -> None:
        """After the interval, measure again. A failed calibration raises (the loop logs it)
        and the last measurement stands until the next turn, an interval later."""
        await asyncio.sleep(self.settings.calibration_interval_s)
        calibration = await self._calibrate()
        changed = self.calibration is None or calibration.fidelity != self.calibration.fidelity
        self.calibration = calibration
        log.info("mesh_node_calibrated", fidelity=calibration.fidelity)
        with contextlib.suppress(MeshPeerError):
            await self._publish_quality()
        if changed:
            self.publisher.changed()

    async def _expiry_turn(self) -> None:
        expired = self.book.expire(time.time())
        if expired:
            log.info("reservations_expired", reservations=expired)
            self.publisher.changed()

    async def _ready_check(self) -> str:
        if self.draining:
            raise RuntimeError("draining")
        if not self.host.addrs:
            raise RuntimeError("libp2p host not started")
        return f"peer {self.peer_id}, {len(self.host.connected_peers())} peers connected"

    # -- requests ----------------------------------------------------------------------------

    async def _on_ping(self, peer: str, data: bytes) -> bytes:
        try:
            ping = Ping.model_validate_json(data)
        except ValidationError:
            metrics.REQUESTS_SERVED.labels("ping", "bad_request").inc()
            return Pong(nonce="?", node_id=self.peer_id).model_dump_json().encode()
        metrics.REQUESTS_SERVED.labels("ping", "ok").inc()
        return Pong(nonce=ping.nonce, node_id=self.peer_id).model_dump_json().encode()

    async def _on_reserve(self, peer: str, data: bytes) -> bytes:
        now = time.time()
        try:
            request = ReserveRequest.model_validate_json(data)
        except ValidationError as exc:
            return self._reserve_reply(_field(data, "correlation_id"), "", "bad_request", str(exc))
        cid, rid = request.correlation_id, request.reservation_id
        if request.action == "release":
            if rid in self._running_reservations:
                log.info("reservation_release_deferred", reservation_id=rid, correlation_id=cid)
                return self._reserve_reply(cid, rid)
            if self.book.release(rid, now=now):
                self.publisher.changed()
                return self._reserve_reply(cid, rid)
            return self._reserve_reply(
                cid, rid, "reservation_unknown", f"no accepted reservation {rid}"
            )
        if self.draining:
            return self._reserve_reply(cid, rid, "draining", "the node is shutting down")
        problem = self._capability_problem(set(request.gates), request.num_qubits)
        if problem is not None:
            return self._reserve_reply(cid, rid, *problem)
        assert self.calibration is not None
        decision = self.book.reserve(request, now=now, fidelity=self.calibration.fidelity)
        if decision.accepted:
            self.publisher.changed()
            log.info(
                "reservation_accepted", reservation_id=rid, correlation_id=cid,
                job_id=request.job_id, window=[request.window_start, request.window_end],
            )  # fmt: skip
            return self._reserve_reply(cid, rid)
        log.info(
            "reservation_rejected", reservation_id=rid, correlation_id=cid,
            code=decision.code, reason=decision.reason, next_window=decision.next_window,
        )  # fmt: skip
        return self._reserve_reply(cid, rid, decision.code, decision.reason, decision.next_window)

    def _reserve_reply(
        self,
        correlation_id: str,
        reservation_id: str,
        code: str | None = None,
        message: str = "",
        next_window: tuple[float, float] | None = None,
    ) -> bytes:
        metrics.REQUESTS_SERVED.labels("reserve", code or "ok").inc()
        reply = ReserveReply(
            ok=code is None,
            correlation_id=correlation_id,
            reservation_id=reservation_id,
            node_id=self.peer_id,
            error=None if code is None else ErrorInfo(code=code, message=message),
            next_window=next_window,
        )
        return reply.model_dump_json().encode()

    async def _on_execute(self, peer: str, data: bytes) -> bytes:
        arrived = time.monotonic()
        try:
            request = ExecuteRequest.model_validate_json(data)
        except ValidationError as exc:
            return self._execute_error(_field(data, "correlation_id"), "bad_request", str(exc))
        cid = request.correlation_id
        refused = self._execute_refusal(request)
        if refused is not None:
            return self._execute_error(cid, *refused, request=request)
        self.running += 1
        rid = request.reservation_id
        if rid is not None:
            self._running_reservations.add(rid)
        self._idle.clear()
        self.publisher.changed()
        noise = self.noise
        handoff = request.input_state is not None or request.return_state
        job: ChildRequest = (
            ("slice", (request.circuit, noise, request.shots, request.seed,
                       request.input_state, request.return_state))
            if handoff
            else ("simulate", (request.circuit, noise, request.shots, request.seed))
        )  # fmt: skip
        try:
            kind, value = await self._child(job, FRAGMENT_TIMEOUT_S)
        except ChildTimeoutError as exc:
            return self._execute_error(cid, "execution_failed", str(exc), request=request)
        except QTaskError as exc:  # the child crashed (and was replaced) or the handler broke
            log.error("fragment_failed", correlation_id=cid, error=str(exc))
            return self._execute_error(cid, "internal_error", str(exc), request=request)
        finally:
            self.running -= 1
            if rid is not None:
                self._running_reservations.discard(rid)
                self.book.release(rid, now=time.time())
            if self.running == 0:
                self._idle.set()
            self.publisher.changed()
        if kind == "circuit_error":
            return self._execute_error(cid, "invalid_circuit", str(value), request=request)
        if kind != "ok":
            return self._execute_error(cid, "execution_failed", str(value), request=request)
        state: str | None = None
        if handoff:
            counts, state, run_s = value
        else:
            counts, run_s = value
        queued_s = max(0.0, time.monotonic() - arrived - run_s)
        metrics.REQUESTS_SERVED.labels("execute", "ok").inc()
        metrics.FRAGMENT_SECONDS.observe(run_s)
        log.info(
            "fragment_executed", correlation_id=cid, job_id=request.job_id,
            fragment_id=request.fragment_id, reservation_id=request.reservation_id,
            qubits=request.circuit.num_qubits, shots=request.shots, queued_s=round(queued_s, 6),
            run_s=round(run_s, 6), handoff=handoff,
            state_bytes=0 if state is None else len(state),
        )  # fmt: skip
        return _json(
            ExecuteReply(
                ok=True, correlation_id=cid, node_id=self.peer_id, counts=counts, state=state,
                queued_s=queued_s, run_s=run_s,
            )
        )  # fmt: skip

    async def _on_fault(self, peer: str, data: bytes) -> bytes:
        """FAULT_PROTOCOL (only with `faults_enabled`): set or clear injected faults."""
        try:
            request = FaultRequest.model_validate_json(data)
        except ValidationError as exc:
            reply = FaultReply(ok=False, node_id=self.peer_id,
                               error=ErrorInfo(code="bad_request", message=str(exc)))  # fmt: skip
            return _json(reply)
        before = self.noise
        self.faults.apply(request)
        log.warning("mesh_faults_set", peer=peer, active=self.faults.active())
        if self._fault_expiry is not None:
            self._fault_expiry.cancel()
            self._fault_expiry = None
        remaining = self.faults.remaining_s()
        if remaining is not None:
            self._fault_expiry = asyncio.create_task(self._expire_faults(remaining))
        if self.noise != before:
            await self._recalibrate_now()
        metrics.REQUESTS_SERVED.labels("fault", "ok").inc()
        return _json(FaultReply(ok=True, node_id=self.peer_id, active=self.faults.active()))

    async def _expire_faults(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        self.faults.apply(FaultRequest(action="clear"))
        log.warning("mesh_faults_expired")
        # The layer itself may have expired them already: compare with the noise measured.
        if self.calibration_noise != self.noise:
            await self._recalibrate_now()

    async def _recalibrate_now(self) -> None:
        """Measure fidelity under the noise now in force and advertise it at once."""
        self.calibration = await self._calibrate()
        log.info("mesh_node_calibrated", fidelity=self.calibration.fidelity, trigger="fault")
        with contextlib.suppress(MeshPeerError):
            await self._publish_quality()
        self.publisher.changed()

    def _execute_refusal(self, request: ExecuteRequest) -> tuple[str, str] | None:
        if self.draining:
            return "draining", "the node is shutting down"
        if request.input_state is not None or request.return_state:
            problem = self._handoff_problem(request)
            if problem is not None:
                return problem
        problem = self._capability_problem(
            {op.name for op in request.circuit.instructions}, request.circuit.num_qubits
        )
        if problem is not None:
            return problem
        now = time.time()
        rid = request.reservation_id
        if rid is not None:
            reservation = self.book.state.get(rid)
            if reservation is None or reservation.status != "accepted":
                status = "never made" if reservation is None else reservation.status
                return "reservation_unknown", f"reservation {rid} is {status}"
            if reservation.window_end <= now:
                return "reservation_unknown", f"reservation {rid} ended at {reservation.window_end}"
            if rid in self._running_reservations:
                return "reservation_unknown", f"reservation {rid} is in use by a running fragment"
            return None
        if self.running + self.book.in_use_at(now) >= self.settings.capacity:
            return "busy", f"all {self.settings.capacity} slots are in use or reserved"
        return None

    def _handoff_problem(self, request: ExecuteRequest) -> tuple[str, str] | None:
        """The width cap of a state hand-off: density matrices for a noisy node (or a density
        matrix given), statevectors for an ideal one (qtask.mesh.handoff)."""
        s = self.settings
        n = request.circuit.num_qubits
        if request.return_state and any(i.name == "measure" for i in request.circuit.instructions):
            return "invalid_circuit", "a fragment that hands its state on cannot measure"
        noisy = self.noise != NoiseSpec()
        # A density matrix's .npy is 16·4^n bytes, base64 4/3 of that; a vector's 16·2^n.
        given_density = request.input_state is not None and len(request.input_state) > (
            16 * 2**n * 4 // 3 + 4096
        )
        if noisy or given_density:
            if n > s.max_density_qubits:
                return "state_too_wide", (
                    f"{n} qubits: this node hands off density matrices of at most "
                    f"{s.max_density_qubits} qubits (16·4^n bytes)"
                )
        elif n > s.max_statevector_qubits:
            return "state_too_wide", (
                f"{n} qubits: this node hands off statevectors of at most "
                f"{s.max_statevector_qubits} qubits"
            )
        return None

    def _capability_problem(self, gates: set[str], num_qubits: int) -> tuple[str, str] | None:
        missing = gates - self._gates
        if missing:
            return "gate_not_offered", f"gates not offered here: {', '.join(sorted(missing))}"
        low, high = self.settings.min_qubits, self.settings.max_qubits
        if not low <= num_qubits <= high:
            return "qubits_out_of_range", f"{num_qubits} qubits; this node takes {low}..{high}"
        return None

    def _execute_error(
        self, cid: str, code: str, message: str, *, request: ExecuteRequest | None = None
    ) -> bytes:
        metrics.REQUESTS_SERVED.labels("execute", code).inc()
        log.info(
            "fragment_refused", correlation_id=cid, code=code, detail=message,
            job_id=None if request is None else request.job_id,
            fragment_id=None if request is None else request.fragment_id,
        )  # fmt: skip
        return _json(
            ExecuteReply(
                ok=False, correlation_id=cid, node_id=self.peer_id,
                error=ErrorInfo(code=code, message=message),
            )
        )  # fmt: skip


async def _relay_only(signer: str, data: bytes) -> None:
    """A node relays other nodes' gossip; it acts on none of it."""


def _json(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


def _field(data: bytes, name: str) -> str:
    """A string field of a request that failed validation, when it can still be read."""
    try:
        value: Any = json.loads(data).get(name)
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


async def run_node(
    settings: NodeSettings, *, health_host: str = "127.0.0.1", wedged_exit_s: float = 0.0
) -> None:
    """Run a node until SIGTERM or SIGINT, then drain and stop."""
    # Aer's noise runs log every transpiler pass at INFO through qiskit's loggers, and
    # py-libp2p logs its connection manager's every cycle at INFO.
    logging.getLogger("qiskit").setLevel(logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    node = ServiceNode(settings, health_host=health_host, wedged_exit_s=wedged_exit_s)
    await node.start()
    await until_signalled()
    await node.stop()
